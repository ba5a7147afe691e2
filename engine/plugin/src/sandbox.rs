//! The sandboxed Lua state a plugin runs in.
//!
//! Plugins are untrusted, so a state gets only the `table`, `string`, `math`
//! and `utf8` libraries and a base library with every way out removed:
//! - no `os`, `io`, `package`/`require`, `debug`, `coroutine`; no `dofile`,
//!   `loadfile`, `string.dump`; `load` compiles text only (never bytecode,
//!   which can break the VM's memory safety);
//! - `setmetatable` refuses `__gc`: Lua runs finalizers with hooks disabled,
//!   so a finalizer could loop forever where the time limit cannot see it;
//! - `collectgarbage` only collects and counts; `print` goes to stderr,
//!   prefixed with the plugin file and capped per state;
//! - pattern matching is the budgeted port in [`super::patterns`];
//! - a memory limit on the Lua heap (images a plugin creates are charged
//!   against the same budget, see [`charge`]), and an instruction-count hook
//!   that fails the call once its time window is over. Outside a window no
//!   Lua may run at all.
//!
//! Each state lives on a thread with a large stack ([`on_plugin_thread`]) so
//! Lua's own recursion limits (200 nested C calls) are reached long before
//! the stack runs out, whatever thread the executor runs on.

use std::cell::Cell;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mlua::chunk::ChunkMode;
use mlua::{HookTriggers, Lua, LuaOptions, StdLib, Table, VmState};

use super::SandboxLimits;

/// VM instructions between two time checks: cheap (an `Instant::now` per
/// thousand instructions) and still a check every few microseconds.
const HOOK_EVERY: u32 = 1000;
/// Bytes a plugin may print per state; more is dropped with one notice.
const PRINT_BUDGET: usize = 64 * 1024;
/// Largest file `read_file` returns.
const READ_FILE_MAX: usize = 16 << 20;
/// Stack of the thread a plugin runs on.
const PLUGIN_STACK: usize = 16 << 20;

/// What the hook, the callbacks and the error messages share.
pub(crate) struct SandboxState {
    /// The plugin file as the user named it, for messages.
    pub label: String,
    /// The folder `read_file` may read from (`None` for plugins given as text).
    pub dir: Option<PathBuf>,
    pub limits: SandboxLimits,
    /// End of the current window, its length and what it is for; `None`: no Lua may run.
    window: Cell<Option<(Instant, Duration, &'static str)>>,
    cancel: Option<Arc<AtomicBool>>,
    /// Bytes of image and mask buffers this state's userdata own (see [`charge`]).
    live_bytes: Rc<Cell<usize>>,
    printed: Cell<usize>,
    /// Nesting of `image:map` / `mask:map`, which call back into Lua.
    pub map_depth: Cell<u32>,
    /// The plugin file's line the hook last saw running, for errors that carry
    /// no position (running out of memory).
    last_line: Cell<Option<usize>>,
}

impl SandboxState {
    /// Fails when the current window is over (or there is none), or the run was cancelled.
    pub fn check_time(&self) -> mlua::Result<()> {
        match self.window.get() {
            None => Err(rt("plugin code may only run while its file loads or a node runs")),
            Some((end, len, what)) if Instant::now() > end => {
                Err(rt(format!("time limit of {} exceeded {what}", human_duration(len))))
            }
            Some(_) if self.cancel.as_ref().is_some_and(|c| c.load(Ordering::Relaxed)) => Err(rt("cancelled (Ctrl-C)")),
            Some(_) => Ok(()),
        }
    }

    /// Bytes left under the memory limit.
    pub fn room(&self, lua: &Lua) -> usize {
        self.limits.memory_bytes.saturating_sub(self.live_bytes.get().saturating_add(lua.used_memory()))
    }

    /// [`Self::check_time`] for errors raised where the hook gives no
    /// position: located at the plugin line the hook saw last.
    fn check_time_located(&self) -> mlua::Result<()> {
        self.check_time().map_err(|e| match self.last_line.get() {
            Some(line) => rt(format!("{}:{line}: {}", short_src(&self.label), plain(&e))),
            None => e,
        })
    }

    fn mib(&self) -> String {
        format_bytes(self.limits.memory_bytes)
    }
}

pub(crate) fn rt(msg: impl Into<String>) -> mlua::Error {
    mlua::Error::RuntimeError(msg.into())
}

pub(crate) fn format_bytes(b: usize) -> String {
    if b >= 1 << 20 && b.is_multiple_of(1 << 20) { format!("{} MiB", b >> 20) } else { format!("{b} bytes") }
}

fn human_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 1.0 { format!("{s} s") } else { format!("{} ms", d.as_millis()) }
}

/// Rust-side bytes (image pixels) owned by a userdata value; released when
/// Lua collects it.
pub(crate) struct Charge {
    bytes: usize,
    live: Rc<Cell<usize>>,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.live.set(self.live.get().saturating_sub(self.bytes));
    }
}

/// Charges `bytes` of new Rust-side buffer against the plugin's memory limit.
/// The Lua heap and these buffers share one budget: the Lua heap's limit is
/// lowered by what the buffers hold. Garbage is collected once before giving up.
pub(crate) fn charge(lua: &Lua, bytes: usize, what: &str) -> mlua::Result<Charge> {
    let st = state(lua)?;
    let limit = st.limits.memory_bytes;
    let fits = || st.live_bytes.get().saturating_add(bytes).saturating_add(lua.used_memory()) <= limit;
    if !fits() {
        lua.gc_collect()?;
        if !fits() {
            return Err(rt(format!(
                "memory limit of {} exceeded: {what} needs {} more",
                st.mib(),
                format_bytes(bytes)
            )));
        }
    }
    st.live_bytes.set(st.live_bytes.get() + bytes);
    lua.set_memory_limit(limit.saturating_sub(st.live_bytes.get()).max(1))?;
    Ok(Charge { bytes, live: st.live_bytes.clone() })
}

/// The sandbox state of `lua`.
pub(crate) fn state(lua: &Lua) -> mlua::Result<Rc<SandboxState>> {
    lua.app_data_ref::<Rc<SandboxState>>().map(|s| s.clone()).ok_or_else(|| rt("not a plugin sandbox"))
}

/// A sandboxed Lua state for one plugin file.
pub(crate) struct Sandbox {
    pub lua: Lua,
    pub state: Rc<SandboxState>,
}

/// Lua run once per state before the plugin, with the Rust `emit` (print's
/// sink) and `check` (fails once the time window is over) as arguments. It
/// keeps the originals it wraps in locals the plugin cannot reach (there is
/// no `debug` library).
const PRELUDE: &str = r##"
local emit, check = ...
local load, setmetatable, rawget, type, error = load, setmetatable, rawget, type, error
local pcall = pcall
local tostring, select, concat, collectgarbage = tostring, select, table.concat, collectgarbage

-- Text only: bytecode can be crafted to break the VM. `...` keeps "env
-- given as nil" apart from "env not given", as load itself does.
-- load catches errors of a reader function: a limit hit there must not be
-- returned as an ordinary failure to retry.
local function after_load(f, ...)
  if f == nil then check() end
  return f, ...
end
_G.load = function(chunk, name, mode, ...)
  if mode ~= nil and mode ~= "t" then
    error("load: only text chunks can be loaded in a plugin (mode must be \"t\")", 2)
  end
  return after_load(load(chunk, name, "t", ...))
end

_G.setmetatable = function(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("setmetatable: __gc metamethods are not allowed in plugins", 2)
  end
  return setmetatable(t, mt)
end

local allowed_gc = { collect = true, count = true, step = true, isrunning = true }
_G.collectgarbage = function(opt, ...)
  if opt == nil or allowed_gc[opt] then return collectgarbage(opt, ...) end
  error("collectgarbage: option " .. tostring(opt) .. " is not allowed in plugins", 2)
end

-- The time limit fails the call every thousand instructions, but a
-- `while true do pcall(spin) end` would catch each failure and go on: once
-- the window is over, a caught error is raised again outside the pcall.
local function rethrow_limits(ok, ...)
  if not ok then check() end
  return ok, ...
end
_G.pcall = function(...) return rethrow_limits(pcall(...)) end
-- Lua runs xpcall's handler for an error raised by the time-limit hook with
-- hooks still disabled, where an endless handler could never be stopped; so
-- the handler runs after the pcall instead, as ordinary code.
local function handled(msgh, ok, ...)
  if ok then return true, ... end
  check()
  local hok, r = pcall(msgh, (...))
  if not hok then check() end
  return false, r
end
_G.xpcall = function(f, msgh, ...) return handled(msgh, pcall(f, ...)) end

_G.print = function(...)
  local parts = {}
  for i = 1, select("#", ...) do parts[i] = tostring((select(i, ...))) end
  emit(concat(parts, "\t"))
end

_G.dofile, _G.loadfile, _G.require = nil, nil, nil
string.dump = nil
-- Runs are reproducible (and so cacheable) unless the plugin seeds itself.
math.randomseed(0)
"##;

impl Sandbox {
    pub fn new(
        label: &str,
        dir: Option<&Path>,
        limits: &SandboxLimits,
        cancel: Option<Arc<AtomicBool>>,
    ) -> mlua::Result<Sandbox> {
        let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8;
        let lua = Lua::new_with(libs, LuaOptions::new())?;
        let state = Rc::new(SandboxState {
            label: label.to_string(),
            dir: dir.map(Path::to_path_buf),
            limits: limits.clone(),
            window: Cell::new(None),
            cancel,
            live_bytes: Rc::new(Cell::new(0)),
            printed: Cell::new(0),
            map_depth: Cell::new(0),
            last_line: Cell::new(None),
        });
        lua.set_app_data(state.clone());

        let st = state.clone();
        let emit = lua.create_function(move |_, text: mlua::LuaString| {
            emit_print(&st, &text.to_string_lossy());
            Ok(())
        })?;
        let st = state.clone();
        let check = lua.create_function(move |_, ()| st.check_time_located())?;
        lua.load(PRELUDE).set_name(PRELUDE_NAME).set_mode(ChunkMode::Text).call::<()>((emit, check))?;

        let string: Table = lua.globals().raw_get("string")?;
        let (st, st2) = (state.clone(), state.clone());
        super::patterns::install(&lua, &string, move || st.check_time(), move |lua| st2.room(lua))?;

        let st = state.clone();
        lua.globals()
            .raw_set("read_file", lua.create_function(move |lua, name: String| read_file(lua, &st, &name))?)?;
        super::api::install(&lua)?;

        // Last: from here on, Lua runs only inside a window.
        let st = state.clone();
        let short = short_src(label);
        lua.set_global_hook(HookTriggers::new().every_nth_instruction(HOOK_EVERY), move |_, dbg| {
            let src = dbg.source();
            let line = dbg.current_line();
            if src.short_src.as_deref() == Some(short.as_str()) {
                st.last_line.set(line);
            }
            st.check_time().map_err(|e| match (src.short_src.as_deref(), line) {
                (Some(file), Some(line)) => rt(format!("{file}:{line}: {}", plain(&e))),
                _ => e,
            })?;
            Ok(VmState::Continue)
        })?;
        lua.set_memory_limit(limits.memory_bytes)?;
        Ok(Sandbox { lua, state })
    }

    /// Runs `f` with a time window of `len` open (`what` says what for, in
    /// messages: "while loading" / "in run"), and the memory limit reset.
    pub fn window<R>(&self, len: Duration, what: &'static str, f: impl FnOnce() -> mlua::Result<R>) -> mlua::Result<R> {
        let limit = self.state.limits.memory_bytes.saturating_sub(self.state.live_bytes.get()).max(1);
        self.lua.set_memory_limit(limit)?;
        self.state.window.set(Some((Instant::now() + len, len, what)));
        let r = f();
        self.state.window.set(None);
        r
    }

    /// Compiles and runs the plugin file's text (never bytecode).
    pub fn exec_file(&self, source: &[u8]) -> mlua::Result<()> {
        self.lua.load(source).set_name(format!("@{}", self.state.label)).set_mode(ChunkMode::Text).exec()
    }

    /// A Lua error as one line for people: `file:line: message`, the file
    /// as the user named it (Lua shortens long names with "...").
    pub fn describe(&self, e: &mlua::Error) -> String {
        let msg = describe_error(e, &self.state.label, self.state.limits.memory_bytes);
        match self.state.last_line.get() {
            Some(line) if is_memory_error(e) => format!("{msg} (near line {line})"),
            _ => msg,
        }
    }
}

fn emit_print(st: &SandboxState, text: &str) {
    let used = st.printed.get();
    if used >= PRINT_BUDGET {
        return;
    }
    let room = PRINT_BUDGET - used;
    let mut end = text.len().min(room);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    st.printed.set(used + end.max(1));
    eprintln!("[{}] {}", st.label, &text[..end]);
    if st.printed.get() >= PRINT_BUDGET {
        eprintln!("[{}] (further output from this plugin is dropped)", st.label);
    }
}

/// `read_file(name)`: a file in the plugin's own folder (or below it), as a string.
fn read_file(lua: &Lua, st: &SandboxState, name: &str) -> mlua::Result<mlua::Value> {
    let Some(dir) = &st.dir else {
        return Err(rt("read_file: this plugin was not loaded from a folder"));
    };
    let rel = Path::new(name);
    if name.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(rt(format!(
            "read_file: {name:?} must be a relative path inside the plugin's folder (no \"..\", no leading \"/\")"
        )));
    }
    let err = |e: std::io::Error| rt(format!("read_file: cannot read {name:?}: {e}"));
    let base = dir.canonicalize().map_err(err)?;
    let path = base.join(rel).canonicalize().map_err(err)?;
    // A symlink could still point outside.
    if !path.starts_with(&base) {
        return Err(rt(format!("read_file: {name:?} leads outside the plugin's folder")));
    }
    let meta = std::fs::metadata(&path).map_err(err)?;
    if !meta.is_file() {
        return Err(rt(format!("read_file: {name:?} is not a file")));
    }
    let max = READ_FILE_MAX.min(st.limits.memory_bytes / 2);
    if meta.len() > max as u64 {
        return Err(rt(format!("read_file: {name:?} is larger than {}", format_bytes(max))));
    }
    let bytes = std::fs::read(&path).map_err(err)?;
    // Bytes, not text: plugins may read any format. The Lua string counts against the Lua heap's limit.
    Ok(mlua::Value::String(lua.create_string(&bytes)?))
}

/// The prelude's chunk name; frames in it are skipped when locating errors.
const PRELUDE_NAME: &str = "=sdgraph prelude";

/// Lua's `luaO_chunkid` for `@file` names: at most 59 bytes, else "..." and the tail.
fn short_src(label: &str) -> String {
    const IDSIZE: usize = 60;
    if label.len() < IDSIZE {
        return label.to_string();
    }
    let keep = IDSIZE - 1 - 3;
    let mut start = label.len() - keep;
    while !label.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &label[start..])
}

/// The message of `e` without mlua's "runtime error: " decoration or the stack traceback.
fn plain(e: &mlua::Error) -> String {
    match e {
        mlua::Error::RuntimeError(s) | mlua::Error::MemoryError(s) => strip_traceback(s).to_string(),
        mlua::Error::SyntaxError { message, .. } => strip_traceback(message).to_string(),
        e => e.to_string(),
    }
}

fn strip_traceback(s: &str) -> &str {
    s.split("\nstack traceback:").next().unwrap_or(s).trim_end()
}

/// True when `msg` starts with a Lua location, `src:line: `.
fn has_location(msg: &str) -> bool {
    let mut rest = msg;
    while let Some(i) = rest.find(':') {
        let after = &rest[i + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(':') {
            return true;
        }
        rest = after;
        if msg.len() - rest.len() > 300 {
            break;
        }
    }
    false
}

/// The innermost Lua frame of an mlua traceback, as `src:line`.
fn traceback_location(tb: &str) -> Option<String> {
    let skip = |l: &str| l.starts_with("[C]") || l.starts_with("stack traceback") || l.starts_with(&PRELUDE_NAME[1..]);
    tb.lines().map(str::trim).filter(|l| !skip(l)).find_map(|l| {
        let (loc, _) = l.split_once(": in ")?;
        let (_, line) = loc.rsplit_once(':')?;
        (!line.is_empty() && line.bytes().all(|b| b.is_ascii_digit())).then(|| loc.to_string())
    })
}

fn is_memory_error(e: &mlua::Error) -> bool {
    match e {
        mlua::Error::MemoryError(_) => true,
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => is_memory_error(cause),
        _ => false,
    }
}

/// A Rust type in an mlua conversion message, in Lua's words.
fn lua_words(rust: &str) -> String {
    match rust {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "isize" | "usize" | "Integer" => {
            "an integer".into()
        }
        "f32" | "f64" | "Number" => "a number".into(),
        "String" | "LuaString" | "BString" => "a string".into(),
        "Table" => "a table".into(),
        "Function" => "a function".into(),
        "bool" => "a boolean".into(),
        other => other.to_string(),
    }
}

fn describe_inner(e: &mlua::Error, memory: usize) -> String {
    use mlua::Error as E;
    match e {
        E::CallbackError { traceback, cause } => {
            let inner = describe_inner(cause, memory);
            match traceback_location(traceback) {
                Some(loc) if !has_location(&inner) => format!("{loc}: {inner}"),
                _ => inner,
            }
        }
        E::MemoryError(_) => format!("memory limit of {} exceeded", format_bytes(memory)),
        E::BadArgument { to, pos, name, cause } => {
            // mlua names methods "Image.get" and counts `self` as argument 1; Lua says img:get and counts from x.
            let (to, pos) = match to.as_deref().and_then(|t| t.split_once('.')) {
                Some((ty, m)) => (Some(format!("{}:{m}", ty.to_ascii_lowercase())), pos.saturating_sub(1)),
                None => (to.clone(), *pos),
            };
            let which = match name {
                Some(n) => format!("bad argument #{pos} ({n})"),
                None => format!("bad argument #{pos}"),
            };
            let to = to.map(|t| format!(" to '{t}'")).unwrap_or_default();
            format!("{which}{to}: {}", describe_inner(cause, memory))
        }
        E::FromLuaConversionError { from, to, .. } => format!("expected {}, got {from}", lua_words(to)),
        E::WithContext { context, cause } => format!("{context}: {}", describe_inner(cause, memory)),
        e => plain(e),
    }
}

pub(crate) fn describe_error(e: &mlua::Error, label: &str, memory: usize) -> String {
    let msg = describe_inner(e, memory);
    let short = short_src(label);
    if short != label && msg.starts_with(&short) {
        return format!("{label}{}", &msg[short.len()..]);
    }
    if msg.starts_with(label) { msg } else { format!("{label}: {msg}") }
}

/// Runs `f` on a fresh thread with a large stack and waits for it, polling
/// `cancel` meanwhile and forwarding it to `forward` (which the sandbox's
/// hook watches). A panic in `f` is resumed here; `Err` if no thread could
/// be started.
pub(crate) fn on_plugin_thread<R: Send>(
    cancel: Option<&AtomicBool>,
    forward: Arc<AtomicBool>,
    f: impl FnOnce() -> R + Send,
) -> Result<R, String> {
    use std::sync::mpsc::{RecvTimeoutError, channel};
    let (tx, rx) = channel();
    std::thread::scope(|s| {
        let h = std::thread::Builder::new()
            .name("sdgraph-plugin".into())
            .stack_size(PLUGIN_STACK)
            .spawn_scoped(s, move || {
                // The receiver only goes away once this thread is joined.
                let _ = tx.send(f());
            })
            .map_err(|e| format!("cannot start a thread for the plugin: {e}"))?;
        loop {
            match rx.recv_timeout(Duration::from_millis(10)) {
                Ok(r) => {
                    let _ = h.join();
                    return Ok(r);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                        forward.store(true, Ordering::Relaxed);
                    }
                }
                // `f` panicked: hand the panic on.
                Err(RecvTimeoutError::Disconnected) => match h.join() {
                    Ok(()) => return Err("the plugin thread ended without a result".into()),
                    Err(p) => std::panic::resume_unwind(p),
                },
            }
        }
    })
}
