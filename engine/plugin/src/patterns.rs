//! Lua's pattern matching (`string.find`, `match`, `gmatch`, `gsub`) with a
//! time budget.
//!
//! Lua's own matcher (lstrlib.c) is C code that backtracks without ever
//! returning to the VM, so the instruction-count hook that enforces the
//! sandbox's time limit never fires inside it: `("a"):rep(1e5):find(".-b")`
//! runs for hours. This is a line-by-line port of Lua 5.4.9's lstrlib.c
//! matcher (`match`, `max_expand`, `min_expand`, captures, `%b`, `%f`, the
//! character classes in the C locale) that calls back into the sandbox every
//! few thousand steps, so a runaway pattern becomes a time-limit error.
//! Semantics and error messages follow lstrlib.c; the sandbox replaces the
//! four functions in the `string` table (and so the `s:find(...)` methods).

use mlua::{Function, Lua, LuaString, MultiValue, Table, Value, Variadic};

/// Captures per pattern (LUA_MAXCAPTURES).
const MAX_CAPTURES: usize = 32;
/// Recursion depth of `do_match` (MAXCCALLS in lstrlib.c).
const MAX_DEPTH: usize = 200;
/// Matcher steps between two calls of the time check.
const STEPS_PER_CHECK: u32 = 1 << 12;
const L_ESC: u8 = b'%';
const SPECIALS: &[u8] = b"^$*+?.([%-";

/// Checks the time limit; an `Err` aborts the match with that error.
pub(crate) type Tick<'a> = &'a dyn Fn() -> mlua::Result<()>;

#[derive(Clone, Copy, PartialEq)]
enum CapLen {
    Len(usize),
    Unfinished,
    Position,
}

/// One capture: a string slice of the subject or a position.
enum Capture<'s> {
    Str(&'s [u8]),
    Position(usize),
}

struct MatchState<'a> {
    src: &'a [u8],
    pat: &'a [u8],
    depth: usize,
    level: usize,
    capture: [(usize, CapLen); MAX_CAPTURES],
    steps: u32,
    tick: Tick<'a>,
}

fn err<T>(msg: impl Into<String>) -> mlua::Result<T> {
    Err(mlua::Error::RuntimeError(msg.into()))
}

impl<'a> MatchState<'a> {
    fn new(src: &'a [u8], pat: &'a [u8], tick: Tick<'a>) -> Self {
        MatchState {
            src,
            pat,
            depth: MAX_DEPTH,
            level: 0,
            capture: [(0, CapLen::Unfinished); MAX_CAPTURES],
            steps: 0,
            tick,
        }
    }

    fn reprep(&mut self) {
        self.depth = MAX_DEPTH;
        self.level = 0;
    }

    /// The pattern byte at `i`, 0 past the end (C reads the terminating NUL there).
    fn p(&self, i: usize) -> u8 {
        self.pat.get(i).copied().unwrap_or(0)
    }

    fn step(&mut self) -> mlua::Result<()> {
        self.steps += 1;
        if self.steps >= STEPS_PER_CHECK {
            self.steps = 0;
            (self.tick)()?;
        }
        Ok(())
    }

    fn check_capture(&self, l: u8) -> mlua::Result<usize> {
        let l = l as i32 - b'1' as i32;
        if l < 0 || l as usize >= self.level || self.capture[l as usize].1 == CapLen::Unfinished {
            return err(format!("invalid capture index %{}", l + 1));
        }
        Ok(l as usize)
    }

    fn capture_to_close(&self) -> mlua::Result<usize> {
        (0..self.level)
            .rev()
            .find(|&l| self.capture[l].1 == CapLen::Unfinished)
            .map_or_else(|| err("invalid pattern capture"), Ok)
    }

    /// Index just past the single-character class starting at `p`.
    fn class_end(&self, mut p: usize) -> mlua::Result<usize> {
        let c = self.p(p);
        p += 1;
        match c {
            L_ESC => {
                if p >= self.pat.len() {
                    return err("malformed pattern (ends with '%')");
                }
                Ok(p + 1)
            }
            b'[' => {
                if self.p(p) == b'^' {
                    p += 1;
                }
                loop {
                    if p >= self.pat.len() {
                        return err("malformed pattern (missing ']')");
                    }
                    let c = self.p(p);
                    p += 1;
                    if c == L_ESC && p < self.pat.len() {
                        p += 1;
                    }
                    if self.p(p) == b']' {
                        break;
                    }
                }
                Ok(p + 1)
            }
            _ => Ok(p),
        }
    }

    /// `[...]` starting at `p` (the '['), ending at `ec` (the ']').
    fn match_bracket_class(&self, c: u8, mut p: usize, ec: usize) -> bool {
        let mut sig = true;
        if self.p(p + 1) == b'^' {
            sig = false;
            p += 1;
        }
        loop {
            p += 1;
            if p >= ec {
                break;
            }
            if self.p(p) == L_ESC {
                p += 1;
                if match_class(c, self.p(p)) {
                    return sig;
                }
            } else if self.p(p + 1) == b'-' && p + 2 < ec {
                p += 2;
                if self.p(p - 2) <= c && c <= self.p(p) {
                    return sig;
                }
            } else if self.p(p) == c {
                return sig;
            }
        }
        !sig
    }

    fn single_match(&mut self, s: usize, p: usize, ep: usize) -> mlua::Result<bool> {
        self.step()?;
        if s >= self.src.len() {
            return Ok(false);
        }
        let c = self.src[s];
        Ok(match self.p(p) {
            b'.' => true,
            L_ESC => match_class(c, self.p(p + 1)),
            b'[' => self.match_bracket_class(c, p, ep - 1),
            pc => pc == c,
        })
    }

    fn match_balance(&mut self, s: usize, p: usize) -> mlua::Result<Option<usize>> {
        if p + 1 >= self.pat.len() {
            return err("malformed pattern (missing arguments to '%b')");
        }
        if s >= self.src.len() || self.src[s] != self.p(p) {
            return Ok(None);
        }
        let (b, e) = (self.p(p), self.p(p + 1));
        let mut cont = 1;
        let mut s = s + 1;
        while s < self.src.len() {
            self.step()?;
            let c = self.src[s];
            if c == e {
                cont -= 1;
                if cont == 0 {
                    return Ok(Some(s + 1));
                }
            } else if c == b {
                cont += 1;
            }
            s += 1;
        }
        Ok(None)
    }

    fn max_expand(&mut self, s: usize, p: usize, ep: usize) -> mlua::Result<Option<usize>> {
        let mut i = 0;
        while self.single_match(s + i, p, ep)? {
            i += 1;
        }
        loop {
            if let Some(r) = self.do_match(s + i, ep + 1)? {
                return Ok(Some(r));
            }
            if i == 0 {
                return Ok(None);
            }
            i -= 1;
        }
    }

    fn min_expand(&mut self, mut s: usize, p: usize, ep: usize) -> mlua::Result<Option<usize>> {
        loop {
            if let Some(r) = self.do_match(s, ep + 1)? {
                return Ok(Some(r));
            }
            if self.single_match(s, p, ep)? {
                s += 1;
            } else {
                return Ok(None);
            }
        }
    }

    fn start_capture(&mut self, s: usize, p: usize, what: CapLen) -> mlua::Result<Option<usize>> {
        if self.level >= MAX_CAPTURES {
            return err("too many captures");
        }
        self.capture[self.level] = (s, what);
        self.level += 1;
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.level -= 1;
        }
        Ok(r)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> mlua::Result<Option<usize>> {
        let l = self.capture_to_close()?;
        self.capture[l].1 = CapLen::Len(s - self.capture[l].0);
        let r = self.do_match(s, p)?;
        if r.is_none() {
            self.capture[l].1 = CapLen::Unfinished;
        }
        Ok(r)
    }

    fn match_capture(&mut self, s: usize, l: u8) -> mlua::Result<Option<usize>> {
        let l = self.check_capture(l)?;
        // A position capture has no text; C compares against its huge "length" and fails.
        let (init, len) = match self.capture[l] {
            (init, CapLen::Len(len)) => (init, len),
            _ => return Ok(None),
        };
        if self.src.len() - s >= len && self.src[init..init + len] == self.src[s..s + len] {
            Ok(Some(s + len))
        } else {
            Ok(None)
        }
    }

    fn do_match(&mut self, s: usize, p: usize) -> mlua::Result<Option<usize>> {
        if self.depth == 0 {
            return err("pattern too complex");
        }
        self.depth -= 1;
        let r = self.match_inner(s, p);
        self.depth += 1;
        r
    }

    fn match_inner(&mut self, mut s: usize, mut p: usize) -> mlua::Result<Option<usize>> {
        loop {
            self.step()?;
            if p >= self.pat.len() {
                return Ok(Some(s));
            }
            match self.p(p) {
                b'(' => {
                    return if self.p(p + 1) == b')' {
                        self.start_capture(s, p + 2, CapLen::Position)
                    } else {
                        self.start_capture(s, p + 1, CapLen::Unfinished)
                    };
                }
                b')' => return self.end_capture(s, p + 1),
                b'$' if p + 1 == self.pat.len() => {
                    return Ok((s == self.src.len()).then_some(s));
                }
                L_ESC if self.p(p + 1) == b'b' => match self.match_balance(s, p + 2)? {
                    Some(ns) => {
                        s = ns;
                        p += 4;
                        continue;
                    }
                    None => return Ok(None),
                },
                L_ESC if self.p(p + 1) == b'f' => {
                    p += 2;
                    if self.p(p) != b'[' {
                        return err("missing '[' after '%f' in pattern");
                    }
                    let ep = self.class_end(p)?;
                    let previous = if s == 0 { 0 } else { self.src[s - 1] };
                    let current = self.src.get(s).copied().unwrap_or(0);
                    if !self.match_bracket_class(previous, p, ep - 1) && self.match_bracket_class(current, p, ep - 1) {
                        p = ep;
                        continue;
                    }
                    return Ok(None);
                }
                L_ESC if self.p(p + 1).is_ascii_digit() => match self.match_capture(s, self.p(p + 1))? {
                    Some(ns) => {
                        s = ns;
                        p += 2;
                        continue;
                    }
                    None => return Ok(None),
                },
                _ => {
                    let ep = self.class_end(p)?;
                    let suffix = self.p(ep);
                    if !self.single_match(s, p, ep)? {
                        if matches!(suffix, b'*' | b'?' | b'-') {
                            p = ep + 1;
                            continue;
                        }
                        return Ok(None);
                    }
                    match suffix {
                        b'?' => {
                            if let Some(r) = self.do_match(s + 1, ep + 1)? {
                                return Ok(Some(r));
                            }
                            p = ep + 1;
                            continue;
                        }
                        b'+' => return self.max_expand(s + 1, p, ep),
                        b'*' => return self.max_expand(s, p, ep),
                        b'-' => return self.min_expand(s, p, ep),
                        _ => {
                            s += 1;
                            p = ep;
                            continue;
                        }
                    }
                }
            }
        }
    }

    /// Capture `i` of a match spanning `s..e` (capture 0 is the whole match when there are none).
    fn get_capture(&self, i: usize, s: usize, e: usize) -> mlua::Result<Capture<'a>> {
        if i >= self.level {
            if i != 0 {
                return err(format!("invalid capture index %{}", i + 1));
            }
            return Ok(Capture::Str(&self.src[s..e]));
        }
        match self.capture[i] {
            (_, CapLen::Unfinished) => err("unfinished capture"),
            (init, CapLen::Position) => Ok(Capture::Position(init + 1)),
            (init, CapLen::Len(len)) => Ok(Capture::Str(&self.src[init..init + len])),
        }
    }

    /// All captures as Lua values (the whole match when there are none and `whole` is given).
    fn captures(&self, lua: &Lua, whole: Option<(usize, usize)>) -> mlua::Result<MultiValue> {
        let n = if self.level == 0 && whole.is_some() { 1 } else { self.level };
        let (s, e) = whole.unwrap_or((0, 0));
        let mut out = MultiValue::with_capacity(n);
        for i in 0..n {
            out.push_back(capture_value(lua, self.get_capture(i, s, e)?)?);
        }
        Ok(out)
    }
}

fn capture_value(lua: &Lua, c: Capture<'_>) -> mlua::Result<Value> {
    Ok(match c {
        Capture::Str(b) => Value::String(lua.create_string(b)?),
        Capture::Position(p) => Value::Integer(p as i64),
    })
}

/// lstrlib.c's `match_class` in the C locale.
fn match_class(c: u8, cl: u8) -> bool {
    let res = match cl.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c.is_ascii_control(),
        b'd' => c.is_ascii_digit(),
        b'g' => c.is_ascii_graphic(),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        b's' => matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        b'z' => c == 0,
        _ => return cl == c,
    };
    if cl.is_ascii_lowercase() { res } else { !res }
}

/// lstrlib.c's `posrelatI`: a 1-based start position, negative from the end.
fn start_index(pos: Option<i64>, len: usize) -> usize {
    match pos.unwrap_or(1) {
        p if p > 0 => p as usize,
        0 => 1,
        p if p < -(len as i64) => 1,
        p => (len as i64 + p + 1) as usize,
    }
}

/// Plain substring search. Naive (as lstrlib.c's), so a long needle against
/// a long haystack is quadratic: the time check runs every few million byte
/// comparisons.
fn find_plain(hay: &[u8], needle: &[u8], tick: Tick<'_>) -> mlua::Result<Option<usize>> {
    if needle.is_empty() {
        return Ok(Some(0));
    }
    if needle.len() > hay.len() {
        return Ok(None);
    }
    let every = (1 << 22) / needle.len() + 1;
    for (i, w) in hay.windows(needle.len()).enumerate() {
        if i % every == every - 1 {
            tick()?;
        }
        if w == needle {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

fn find_aux(lua: &Lua, tick: Tick<'_>, args: FindArgs, find: bool) -> mlua::Result<MultiValue> {
    let (s, p) = (args.s.as_bytes(), args.p.as_bytes());
    let init = start_index(args.init, s.len()) - 1;
    let fail = || Ok(MultiValue::from_iter([Value::Nil]));
    if init > s.len() {
        return fail();
    }
    if find && (args.plain || !p.iter().any(|c| SPECIALS.contains(c))) {
        return match find_plain(&s[init..], &p, tick)? {
            Some(i) => Ok(MultiValue::from_iter([
                Value::Integer((init + i + 1) as i64),
                Value::Integer((init + i + p.len()) as i64),
            ])),
            None => fail(),
        };
    }
    let anchor = p.first() == Some(&b'^');
    let pat = if anchor { &p[1..] } else { &p[..] };
    let mut ms = MatchState::new(&s, pat, tick);
    let mut s1 = init;
    loop {
        ms.reprep();
        if let Some(e) = ms.do_match(s1, 0)? {
            if find {
                let mut out = MultiValue::from_iter([Value::Integer((s1 + 1) as i64), Value::Integer(e as i64)]);
                out.extend(ms.captures(lua, None)?);
                return Ok(out);
            }
            return ms.captures(lua, Some((s1, e)));
        }
        s1 += 1;
        if anchor || s1 > s.len() {
            return fail();
        }
    }
}

struct FindArgs {
    s: LuaString,
    p: LuaString,
    init: Option<i64>,
    plain: bool,
}

/// `string.gsub`'s replacement argument.
enum Repl {
    Str(Vec<u8>),
    Table(Table),
    Func(Function),
}

fn add_repl_string(ms: &MatchState<'_>, out: &mut Vec<u8>, news: &[u8], s: usize, e: usize) -> mlua::Result<()> {
    let mut i = 0;
    while i < news.len() {
        let c = news[i];
        i += 1;
        if c != L_ESC {
            out.push(c);
            continue;
        }
        let d = news.get(i).copied().unwrap_or(0);
        i += 1;
        if d == L_ESC {
            out.push(L_ESC);
        } else if d == b'0' {
            out.extend_from_slice(&ms.src[s..e]);
        } else if d.is_ascii_digit() {
            match ms.get_capture((d - b'1') as usize, s, e)? {
                Capture::Str(b) => out.extend_from_slice(b),
                Capture::Position(p) => out.extend_from_slice(p.to_string().as_bytes()),
            }
        } else {
            return err("invalid use of '%' in replacement string");
        }
    }
    Ok(())
}

fn gsub(
    lua: &Lua,
    tick: Tick<'_>,
    room: usize,
    src: LuaString,
    p: LuaString,
    repl: Value,
    max_n: Option<i64>,
) -> mlua::Result<(Value, i64)> {
    let src_b = src.as_bytes();
    let p_b = p.as_bytes();
    let repl = match repl {
        Value::String(s) => Repl::Str(s.as_bytes().to_vec()),
        v @ (Value::Integer(_) | Value::Number(_)) => {
            Repl::Str(lua.coerce_string(v)?.map(|s| s.as_bytes().to_vec()).unwrap_or_default())
        }
        Value::Table(t) => Repl::Table(t),
        Value::Function(f) => Repl::Func(f),
        v => {
            return err(format!("bad argument #3 to 'gsub' (string/function/table expected, got {})", v.type_name()));
        }
    };
    let max_n = max_n.unwrap_or(src_b.len() as i64 + 1);
    let anchor = p_b.first() == Some(&b'^');
    let pat = if anchor { &p_b[1..] } else { &p_b[..] };
    let mut ms = MatchState::new(&src_b, pat, tick);
    let mut out: Vec<u8> = Vec::new();
    let (mut pos, mut last, mut n, mut changed) = (0usize, None, 0i64, false);
    while n < max_n {
        // The result is built outside the Lua heap, so it is held to what is left of the memory limit here.
        if out.len() > room {
            return Err(mlua::Error::MemoryError("gsub result too large".into()));
        }
        ms.reprep();
        match ms.do_match(pos, 0)? {
            Some(e) if Some(e) != last => {
                n += 1;
                changed |= add_value(lua, &ms, &mut out, pos, e, &repl)?;
                pos = e;
                last = Some(e);
            }
            _ if pos < src_b.len() => {
                out.push(src_b[pos]);
                pos += 1;
            }
            _ => break,
        }
        if anchor {
            break;
        }
    }
    if !changed {
        return Ok((Value::String(src.clone()), n));
    }
    out.extend_from_slice(&src_b[pos..]);
    Ok((Value::String(lua.create_string(&out)?), n))
}

/// Appends the replacement for the match `s..e`; true if it changed the text.
fn add_value(lua: &Lua, ms: &MatchState<'_>, out: &mut Vec<u8>, s: usize, e: usize, repl: &Repl) -> mlua::Result<bool> {
    let v: Value = match repl {
        Repl::Str(news) => {
            add_repl_string(ms, out, news, s, e)?;
            return Ok(true);
        }
        Repl::Func(f) => f.call(ms.captures(lua, Some((s, e)))?)?,
        Repl::Table(t) => t.get(capture_value(lua, ms.get_capture(0, s, e)?)?)?,
    };
    match v {
        Value::Nil | Value::Boolean(false) => {
            out.extend_from_slice(&ms.src[s..e]);
            Ok(false)
        }
        Value::String(r) => {
            out.extend_from_slice(&r.as_bytes());
            Ok(true)
        }
        v @ (Value::Integer(_) | Value::Number(_)) => {
            if let Some(r) = lua.coerce_string(v)? {
                out.extend_from_slice(&r.as_bytes());
            }
            Ok(true)
        }
        v => err(format!("invalid replacement value (a {})", v.type_name())),
    }
}

/// Replaces `string.find`, `string.match`, `string.gmatch` and `string.gsub`
/// in `string` with the budgeted versions; `tick` checks the time limit.
/// `room` says how many bytes a result built on the Rust side may take.
pub(crate) fn install<F, R>(lua: &Lua, string: &Table, tick: F, room: R) -> mlua::Result<()>
where
    F: Fn() -> mlua::Result<()> + Clone + 'static,
    R: Fn(&Lua) -> usize + 'static,
{
    let t = tick.clone();
    string.raw_set(
        "find",
        lua.create_function(move |lua, (s, p, init, plain): (LuaString, LuaString, Option<i64>, Option<Value>)| {
            let plain = plain.is_some_and(|v| !matches!(v, Value::Nil | Value::Boolean(false)));
            find_aux(lua, &t, FindArgs { s, p, init, plain }, true)
        })?,
    )?;
    let t = tick.clone();
    string.raw_set(
        "match",
        lua.create_function(move |lua, (s, p, init): (LuaString, LuaString, Option<i64>)| {
            find_aux(lua, &t, FindArgs { s, p, init, plain: false }, false)
        })?,
    )?;
    let t = tick.clone();
    string.raw_set(
        "gsub",
        lua.create_function(move |lua, (s, p, repl, n): (LuaString, LuaString, Value, Option<i64>)| {
            gsub(lua, &t, room(lua), s, p, repl, n)
        })?,
    )?;
    let t = tick;
    string.raw_set(
        "gmatch",
        lua.create_function(move |lua, (s, p, init): (LuaString, LuaString, Option<i64>)| {
            let len = s.as_bytes().len();
            let init = start_index(init, len) - 1;
            // Iterator state: next start position and the end of the last match.
            let state = std::cell::Cell::new((init.min(len + 1), None::<usize>));
            let t = t.clone();
            lua.create_function(move |lua, _: Variadic<Value>| {
                let (src_b, p_b) = (s.as_bytes(), p.as_bytes());
                let mut ms = MatchState::new(&src_b, &p_b, &t);
                let (mut pos, last) = state.get();
                while pos <= src_b.len() {
                    ms.reprep();
                    if let Some(e) = ms.do_match(pos, 0)?
                        && Some(e) != last
                    {
                        state.set((e, Some(e)));
                        return ms.captures(lua, Some((pos, e)));
                    }
                    pos += 1;
                }
                state.set((pos, last));
                Ok(MultiValue::new())
            })
        })?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lua() -> Lua {
        let lua = Lua::new();
        let string: Table = lua.globals().get("string").unwrap();
        install(&lua, &string, || Ok(()), |_| usize::MAX).unwrap();
        lua
    }

    #[test]
    fn matches_lua_semantics() {
        let lua = lua();
        let cases: &[(&str, &str)] = &[
            (r#"return string.find("hello world", "o w")"#, "5,7"),
            (r#"return string.find("hello world", "l+")"#, "3,4"),
            (r#"return string.find("hello", "l", 1, true)"#, "3,3"),
            (r#"return string.find("a.b", ".", 1, true)"#, "2,2"),
            (r#"return string.find("hello", "xyz")"#, "nil"),
            (r#"return string.find("hello", "")"#, "1,0"),
            (r#"return string.find("hello", "", 10)"#, "nil"),
            (r#"return string.find("hello", "l", -2)"#, "4,4"),
            (r#"return string.match("key = value", "(%w+)%s*=%s*(%w+)")"#, "key,value"),
            (r#"return string.match("hello", "()ll()")"#, "3,5"),
            (r#"return string.match("  trim  ", "^%s*(.-)%s*$")"#, "trim"),
            (r#"return string.match("f(a(b)c)d", "%b()")"#, "(a(b)c)"),
            (r#"return string.match("THE (quick) fox", "%f[%a]%a+")"#, "THE"),
            (r#"return string.match("abcabc", "(abc)%1")"#, "abc"),
            (r#"return string.match("2024-01-05", "(%d+)-(%d+)-(%d+)")"#, "2024,01,05"),
            (r#"return string.match("[x]", "[%[]")"#, "["),
            (r#"return string.match("a-b", "[a-c]-")"#, ""),
            (r#"return string.match("zzz", "[^z]")"#, "nil"),
            (r#"return string.gsub("hello world", "o", "0")"#, "hell0 w0rld,2"),
            (r#"return string.gsub("hello", "", "-")"#, "-h-e-l-l-o-,6"),
            (r#"return string.gsub("abc", "%w", "%0%0")"#, "aabbcc,3"),
            (r#"return string.gsub("a=1, b=2", "(%w+)=(%w+)", "%2=%1")"#, "1=a, 2=b,2"),
            (r#"return string.gsub("$name is $age", "%$(%w+)", {name="Ann", age=7})"#, "Ann is 7,2"),
            (r#"return string.gsub("abc", "%w", function(c) return c:upper() end, 2)"#, "ABc,2"),
            (r#"return string.gsub("abc", "x*", "-")"#, "-a-b-c-,4"),
            (r#"return string.gsub("hello", "^h", "H")"#, "Hello,1"),
            (
                r#"local t = {} for k, v in string.gmatch("a=1, b=2", "(%w+)=(%w+)") do t[#t+1] = k..v end return table.concat(t, ";")"#,
                "a1;b2",
            ),
            (
                r#"local t = {} for w in ("one two  three"):gmatch("%a+") do t[#t+1] = w end return table.concat(t, ";")"#,
                "one;two;three",
            ),
            (r#"local n = 0 for _ in ("abc"):gmatch("") do n = n + 1 end return n"#, "4"),
            (r#"return ("x"):rep(3):find("xx")"#, "1,2"),
        ];
        for (src, want) in cases {
            let vals: MultiValue = lua.load(*src).eval().unwrap_or_else(|e| panic!("{src}: {e}"));
            let got: Vec<String> = vals
                .iter()
                .map(|v| match v {
                    Value::Nil => "nil".to_string(),
                    v => v.to_string().unwrap(),
                })
                .collect();
            assert_eq!(got.join(","), *want, "{src}");
        }
    }

    #[test]
    fn malformed_patterns_are_errors() {
        let lua = lua();
        for (src, msg) in [
            (r#"return ("x"):find("%")"#, "ends with '%'"),
            (r#"return ("x"):find("[a")"#, "missing ']'"),
            (r#"return ("x"):find("(x")"#, "unfinished capture"),
            (r#"return ("x"):match("x)")"#, "invalid pattern capture"),
            (r#"return ("x"):find("%1")"#, "invalid capture index %1"),
            (r#"return ("x"):gsub("x", "%2")"#, "invalid capture index %2"),
            (r#"return ("x"):gsub("x", "%z")"#, "invalid use of '%'"),
            (r#"return ("x"):gsub("x", function() return {} end)"#, "invalid replacement value (a table)"),
        ] {
            let e = match lua.load(src).eval::<MultiValue>() {
                Ok(v) => panic!("{src}: no error, returned {v:?}"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(msg), "{src}: {e}");
        }
    }

    #[test]
    fn runaway_patterns_reach_the_time_check() {
        let lua = Lua::new();
        let string: Table = lua.globals().get("string").unwrap();
        let calls = std::rc::Rc::new(std::cell::Cell::new(0u32));
        let c = calls.clone();
        let tick = move || {
            c.set(c.get() + 1);
            if c.get() > 100 { Err(mlua::Error::RuntimeError("out of time".into())) } else { Ok(()) }
        };
        install(&lua, &string, tick, |_| 1000).unwrap();
        let e = lua.load(r#"return string.rep("a", 100000):find(".-b")"#).exec().unwrap_err();
        assert!(e.to_string().contains("out of time"), "{e}");
        assert!(calls.get() > 100);
        // Results built on the Rust side are held to the room they are given.
        let e = lua.load(r#"return string.rep("a", 2000):gsub("a", "bb")"#).exec().unwrap_err();
        assert!(e.to_string().contains("gsub result too large"), "{e}");
    }
}
