//! Shared test helpers: stub node kinds that count their executions, and a
//! one-call "parse and validate" for graph text.
#![allow(dead_code)]

pub mod sd_tiny;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use graph::exec::{Executor, NoProgress, RunOptions, RunReport};
use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{self, ValidGraph};
use graph::{GraphErrors, ParamValue, PortType, Registry, Value};

/// Executions per node id, shared by every stub kind of one registry.
#[derive(Default, Clone)]
pub struct Counter(Arc<Mutex<HashMap<String, usize>>>);

impl Counter {
    pub fn get(&self, id: &str) -> usize {
        self.0.lock().unwrap().get(id).copied().unwrap_or(0)
    }
    fn bump(&self, id: &str) {
        *self.0.lock().unwrap().entry(id.to_string()).or_default() += 1;
    }
    pub fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
}

type RunFn = dyn Fn(&NodeInputs) -> Result<Vec<Value>, NodeError> + Send + Sync;

struct Stub {
    schema: NodeSchema,
    counter: Counter,
    f: Box<RunFn>,
}

impl NodeKind for Stub {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }
    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        self.counter.bump(ctx.node_id);
        (self.f)(inputs)
    }
}

/// A registry of stub kinds:
/// - `Const` (param `value`: Int) -> `int`
/// - `Add` (inputs `a`, `b`: Int) -> `int`
/// - `Fail` (input `a`) -> `int`: always fails
/// - `Panic` (input `a`) -> `int`: panics
/// - `Sink` (input `a`: Int, output node) -> nothing
pub fn stub_registry(counter: &Counter) -> Registry {
    let mut reg = Registry::new();
    let mut add = |schema: NodeSchema, f: Box<RunFn>| {
        reg.register(Arc::new(Stub { schema, counter: counter.clone(), f })).unwrap();
    };
    add(
        NodeSchema::new("Const", "test", "An integer.").int("value", -1000, 1000, 0, "The value.").output(
            "int",
            PortType::Int,
            "It.",
        ),
        Box::new(|i| Ok(vec![Value::Int(i.int("value")? as i64)])),
    );
    add(
        NodeSchema::new("Add", "test", "a + b.").input("a", PortType::Int, "a").input("b", PortType::Int, "b").output(
            "int",
            PortType::Int,
            "sum",
        ),
        Box::new(|i| match (i.input("a")?, i.input("b")?) {
            (Value::Int(a), Value::Int(b)) => Ok(vec![Value::Int(a + b)]),
            _ => Err(NodeError::new("not ints")),
        }),
    );
    add(
        NodeSchema::new("Fail", "test", "Fails.").input("a", PortType::Int, "a").output("int", PortType::Int, "never"),
        Box::new(|_| Err(NodeError::new("this node always fails"))),
    );
    add(
        NodeSchema::new("Panic", "test", "Panics.").input("a", PortType::Int, "a").output(
            "int",
            PortType::Int,
            "never",
        ),
        Box::new(|_| panic!("stub panic")),
    );
    add(NodeSchema::new("Sink", "test", "Consumes.").input("a", PortType::Int, "a").sink(), Box::new(|_| Ok(vec![])));
    reg
}

pub fn validate_str(text: &str, reg: &Registry) -> Result<ValidGraph, GraphErrors> {
    let g = graph::parse_graph("test.ron", text.as_bytes())?;
    graph::validate(g, reg)
}

/// The rendered diagnostics of an invalid graph, one per line.
pub fn errors_of(text: &str, reg: &Registry) -> String {
    match validate_str(text, reg) {
        Ok(_) => panic!("expected the graph to be invalid:\n{text}"),
        Err(e) => e.to_string(),
    }
}

pub fn run(exec: &mut Executor, g: &ValidGraph, out_dir: &std::path::Path) -> RunReport {
    let opts = RunOptions {
        base_dir: ".".into(),
        out_dir: out_dir.to_path_buf(),
        graph_text: String::new(),
        progress: &NoProgress,
        cancel: Arc::new(AtomicBool::new(false)),
    };
    exec.run(g, &opts)
}

pub fn cancelled_flag() -> Arc<AtomicBool> {
    let f = Arc::new(AtomicBool::new(false));
    f.store(true, Ordering::Relaxed);
    f
}

/// A fresh empty folder under the system temp dir.
/// The `sdgraph` command, with a file-hash cache of this test process's own (never the
/// user's `~/.cache/sdgraph`).
pub fn sdgraph_command() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sdgraph"));
    // One folder for every test process (not one per process, which would pile up): it holds only the hash cache.
    c.env("SDGRAPH_CACHE_DIR", std::env::temp_dir().join("sdgraph-test-cache"));
    c
}

/// A fresh folder for one test, removed when the test ends; kept when it fails, so what it wrote can be looked at.
pub struct TempDir(std::path::PathBuf);

impl std::ops::Deref for TempDir {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for TempDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// `name` in a folder of this test's own, removed when the test's thread ends (libtest runs each test on a thread
/// of its own), for helpers that hand out file paths rather than folders.
pub fn scratch_file(name: &str) -> std::path::PathBuf {
    thread_local! {
        static SCRATCH: TempDir = {
            let n = SCRATCH_COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            temp_dir(&format!("scratch-{n}"))
        };
    }
    static SCRATCH_COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    SCRATCH.with(|d| d.join(name))
}

pub fn temp_dir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("sdgraph-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// Reads `child`'s stderr (a pipe, so progress comes as plain lines) until
/// it contains `needle`, then sends SIGINT. Returns the stderr reader (what follows is
/// unread) and when the signal went; panics naming `what` if `needle` never shows in 60 s.
#[cfg(unix)]
pub fn interrupt_after(
    child: &mut std::process::Child,
    needle: &str,
    what: &str,
) -> (std::io::BufReader<std::process::ChildStderr>, std::time::Instant) {
    use std::io::BufRead;
    use std::time::{Duration, Instant};
    let mut stderr = std::io::BufReader::new(child.stderr.take().expect("stderr piped"));
    let mut seen = String::new();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.contains(needle) {
        buf.clear();
        if stderr.read_until(b'\n', &mut buf).unwrap() == 0 || Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what}: {seen}");
        }
        seen.push_str(&String::from_utf8_lossy(&buf));
    }
    let sent = Instant::now();
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    (stderr, sent)
}

/// Runs one node kind directly, outside a graph (node id = the kind), with its schema's defaults for the
/// params not given; the error's message on failure.
pub fn call_kind(
    reg: &Registry,
    kind: &str,
    inputs: &[(&str, Value)],
    params: &[(&str, ParamValue)],
) -> Result<Vec<Value>, String> {
    let node = reg.get(kind).unwrap_or_else(|| panic!("no kind {kind}"));
    let mut inp = NodeInputs::default();
    for p in &node.schema().params {
        if let Some(d) = &p.default {
            inp.params.insert(p.name.clone(), d.clone());
        }
    }
    for (name, v) in params {
        inp.params.insert(name.to_string(), v.clone());
    }
    for (name, v) in inputs {
        inp.inputs.insert(name.to_string(), v.clone());
    }
    let progress = NoProgress;
    let cancel = AtomicBool::new(false);
    let out_dir = std::env::temp_dir();
    let mut ctx = RunContext::new(kind, std::path::Path::new("."), &out_dir, "", &progress, &cancel);
    node.run(&mut ctx, &inp).map_err(|e| e.message)
}

/// [`call_kind`], panicking on an error.
pub fn run_kind(reg: &Registry, kind: &str, inputs: &[(&str, Value)], params: &[(&str, ParamValue)]) -> Vec<Value> {
    call_kind(reg, kind, inputs, params).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

/// The first output of [`call_kind`], panicking on an error.
pub fn one(reg: &Registry, kind: &str, inputs: &[(&str, Value)], params: &[(&str, ParamValue)]) -> Value {
    call_kind(reg, kind, inputs, params).unwrap_or_else(|e| panic!("{kind}: {e}")).remove(0)
}

pub fn int(v: i64) -> ParamValue {
    ParamValue::Int(v.into())
}

pub fn s(v: &str) -> ParamValue {
    ParamValue::String(v.into())
}

pub fn latent_of(v: &Value) -> Arc<nodes::payload::Latent> {
    v.downcast::<nodes::payload::Latent>().expect("a latent")
}

pub fn latent_value(l: nodes::payload::Latent) -> Value {
    Value::Opaque(PortType::Latent, Arc::new(l))
}

pub fn image_of(v: &Value) -> Arc<graph::Image> {
    match v {
        Value::Image(i) => i.clone(),
        v => panic!("not an image: {v:?}"),
    }
}
