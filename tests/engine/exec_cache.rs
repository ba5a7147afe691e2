//! Execution and caching, ComfyUI-style: graphs of stub nodes, asserting
//! which nodes ran and which came from the cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::{Counter, run, stub_registry, validate_str};
use graph::exec::{CachePolicy, Executor, NodeStatus};
use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{PortType, Value};

const DIAMOND: &str = r#"(nodes: {
    "a": (kind: "Const", params: { "value": 1 }),
    "b": (kind: "Const", params: { "value": 2 }),
    "left": (kind: "Add", inputs: { "a": "a.int", "b": "a.int" }),
    "right": (kind: "Add", inputs: { "a": "b.int", "b": "b.int" }),
    "sum": (kind: "Add", inputs: { "a": "left.int", "b": "right.int" }),
    "out": (kind: "Sink", inputs: { "a": "sum.int" }),
    "unused": (kind: "Const", params: { "value": 9 }),
})"#;

fn setup() -> (Counter, graph::Registry, Executor, crate::common::TempDir) {
    let c = Counter::default();
    let reg = stub_registry(&c);
    (c, reg, Executor::default(), crate::common::temp_dir("exec"))
}

#[test]
fn first_run_executes_every_needed_node_in_dependency_order() {
    let (c, reg, mut exec, dir) = setup();
    let g = validate_str(DIAMOND, &reg).unwrap();
    let r = run(&mut exec, &g, &dir);
    assert!(r.ok);
    let order: Vec<&str> = r.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(order, ["a", "b", "left", "right", "sum", "out"]);
    assert_eq!(r.ids_with(NodeStatus::Executed).len(), 6);
    assert_eq!(c.total(), 6);
}

#[test]
fn nodes_that_feed_no_output_node_never_run() {
    let (c, reg, mut exec, dir) = setup();
    let g = validate_str(DIAMOND, &reg).unwrap();
    run(&mut exec, &g, &dir);
    assert_eq!(c.get("unused"), 0);
}

#[test]
fn a_node_feeding_both_a_needed_and_an_unneeded_branch_schedules_only_the_needed_one() {
    let (c, reg, mut exec, dir) = setup();
    let text = r#"(nodes: {
        "a": (kind: "Const", params: { "value": 1 }),
        "dead_end": (kind: "Add", inputs: { "a": "a.int", "b": "a.int" }),
        "live": (kind: "Add", inputs: { "a": "a.int", "b": "a.int" }),
        "out": (kind: "Sink", inputs: { "a": "live.int" }),
    })"#;
    let r = run(&mut exec, &validate_str(text, &reg).unwrap(), &dir);
    assert!(r.ok);
    assert_eq!(r.ids_with(NodeStatus::Executed), ["a", "live", "out"]);
    assert_eq!(c.get("dead_end"), 0);
}

#[test]
fn second_run_of_the_same_graph_is_entirely_cached() {
    let (c, reg, mut exec, dir) = setup();
    let g = validate_str(DIAMOND, &reg).unwrap();
    run(&mut exec, &g, &dir);
    let r = run(&mut exec, &g, &dir);
    assert!(r.ok);
    assert_eq!(r.ids_with(NodeStatus::Cached).len(), 6);
    assert_eq!(c.total(), 6, "nothing ran twice");
}

#[test]
fn editing_a_param_reruns_only_that_node_and_its_dependents() {
    let (c, reg, mut exec, dir) = setup();
    run(&mut exec, &validate_str(DIAMOND, &reg).unwrap(), &dir);
    let edited = DIAMOND.replace(r#""value": 2"#, r#""value": 5"#);
    let r = run(&mut exec, &validate_str(&edited, &reg).unwrap(), &dir);
    assert_eq!(r.ids_with(NodeStatus::Executed), ["b", "right", "sum", "out"]);
    assert_eq!(r.ids_with(NodeStatus::Cached), ["a", "left"]);
    assert_eq!((c.get("a"), c.get("left"), c.get("b"), c.get("out")), (1, 1, 2, 2));
}

#[test]
fn reverting_an_edit_reruns_again_because_only_the_last_run_is_kept() {
    let (_, reg, mut exec, dir) = setup();
    let edited = DIAMOND.replace(r#""value": 2"#, r#""value": 5"#);
    run(&mut exec, &validate_str(DIAMOND, &reg).unwrap(), &dir);
    run(&mut exec, &validate_str(&edited, &reg).unwrap(), &dir);
    let r = run(&mut exec, &validate_str(DIAMOND, &reg).unwrap(), &dir);
    assert_eq!(r.ids_with(NodeStatus::Executed), ["b", "right", "sum", "out"]);
}

#[test]
fn renaming_a_node_keeps_its_cached_result() {
    // Keys depend on what a node computes, not on its id.
    let (c, reg, mut exec, dir) = setup();
    run(&mut exec, &validate_str(DIAMOND, &reg).unwrap(), &dir);
    let renamed = DIAMOND.replace(r#""a": (kind"#, r#""first": (kind"#).replace("\"a.int\"", "\"first.int\"");
    let r = run(&mut exec, &validate_str(&renamed, &reg).unwrap(), &dir);
    assert_eq!(r.ids_with(NodeStatus::Executed), Vec::<&str>::new());
    assert_eq!(c.get("first"), 0);
}

#[test]
fn rewiring_an_input_reruns_the_consumer() {
    let (_, reg, mut exec, dir) = setup();
    run(&mut exec, &validate_str(DIAMOND, &reg).unwrap(), &dir);
    let rewired = DIAMOND.replace(r#""a": "left.int", "b": "right.int""#, r#""a": "right.int", "b": "left.int""#);
    let r = run(&mut exec, &validate_str(&rewired, &reg).unwrap(), &dir);
    assert_eq!(r.ids_with(NodeStatus::Executed), ["sum", "out"]);
}

#[test]
fn with_cache_off_every_run_executes_everything() {
    let c = Counter::default();
    let reg = stub_registry(&c);
    let mut exec = Executor::new(CachePolicy::Off);
    let g = validate_str(DIAMOND, &reg).unwrap();
    let dir = crate::common::temp_dir("nocache");
    run(&mut exec, &g, &dir);
    let r = run(&mut exec, &g, &dir);
    assert_eq!(r.ids_with(NodeStatus::Executed).len(), 6);
    assert_eq!(c.total(), 12);
}

const TWO_BRANCHES: &str = r#"(nodes: {
    "a": (kind: "Const", params: { "value": 1 }),
    "bad": (kind: "Fail", inputs: { "a": "a.int" }),
    "after_bad": (kind: "Add", inputs: { "a": "bad.int", "b": "a.int" }),
    "out_bad": (kind: "Sink", inputs: { "a": "after_bad.int" }),
    "good": (kind: "Add", inputs: { "a": "a.int", "b": "a.int" }),
    "out_good": (kind: "Sink", inputs: { "a": "good.int" }),
})"#;

#[test]
fn a_failing_node_skips_its_dependents_but_other_branches_finish() {
    let (c, reg, mut exec, dir) = setup();
    let r = run(&mut exec, &validate_str(TWO_BRANCHES, &reg).unwrap(), &dir);
    assert!(!r.ok);
    assert_eq!(r.ids_with(NodeStatus::Failed), ["bad"]);
    assert_eq!(r.ids_with(NodeStatus::Skipped), ["after_bad", "out_bad"]);
    assert_eq!(r.ids_with(NodeStatus::Executed), ["a", "good", "out_good"]);
    assert_eq!(r.errors(), [r#"node "bad" (Fail): this node always fails"#]);
    assert_eq!(c.get("after_bad"), 0);
}

#[test]
fn results_of_a_failed_run_stay_cached_for_the_next_run() {
    let (c, reg, mut exec, dir) = setup();
    run(&mut exec, &validate_str(TWO_BRANCHES, &reg).unwrap(), &dir);
    let r = run(&mut exec, &validate_str(TWO_BRANCHES, &reg).unwrap(), &dir);
    assert_eq!(r.ids_with(NodeStatus::Cached), ["a", "good", "out_good"]);
    assert_eq!(c.get("bad"), 2, "a failed node is retried");
    assert_eq!(c.get("good"), 1);
}

#[test]
fn a_panicking_node_becomes_an_error_not_a_crash() {
    let (_, reg, mut exec, dir) = setup();
    let text = TWO_BRANCHES.replace("\"Fail\"", "\"Panic\"");
    let r = run(&mut exec, &validate_str(&text, &reg).unwrap(), &dir);
    assert_eq!(r.ids_with(NodeStatus::Failed), ["bad"]);
    assert!(r.errors()[0].contains("internal error (panic): stub panic"), "{:?}", r.errors());
    assert_eq!(r.ids_with(NodeStatus::Executed), ["a", "good", "out_good"]);
}

#[test]
fn an_int_output_can_drive_a_param() {
    let (c, reg, mut exec, dir) = setup();
    let text = r#"(nodes: {
        "a": (kind: "Const", params: { "value": 20 }),
        "b": (kind: "Const", inputs: { "value": "a.int" }),
        "out": (kind: "Sink", inputs: { "a": "b.int" }),
    })"#;
    let g = validate_str(text, &reg).unwrap();
    assert!(run(&mut exec, &g, &dir).ok);
    assert_eq!(c.get("b"), 1);
    // Changing the upstream value re-runs the node whose param it drives.
    let r = run(&mut exec, &validate_str(&text.replace("20", "21"), &reg).unwrap(), &dir);
    assert_eq!(r.ids_with(NodeStatus::Executed), ["a", "b", "out"]);
}

#[test]
fn cancelled_run_executes_nothing() {
    let (c, reg, mut exec, dir) = setup();
    let g = validate_str(DIAMOND, &reg).unwrap();
    let opts = graph::exec::RunOptions {
        base_dir: ".".into(),
        out_dir: dir.to_path_buf(),
        graph_text: String::new(),
        progress: &graph::exec::NoProgress,
        cancel: crate::common::cancelled_flag(),
    };
    let r = exec.run(&g, &opts);
    assert!(r.cancelled && !r.ok);
    assert_eq!(c.total(), 0);
}

/// A loaded "model" that counts how many are alive, as a GPU pool's bytes would.
struct Loaded(Arc<AtomicUsize>);

impl Drop for Loaded {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl graph::value::Payload for Loaded {
    const PORT: PortType = PortType::Model;
}

/// `Load` (param `which`) -> a [`Loaded`] model; `Use` (input `model`, param `fail`) -> nothing, failing when told.
struct Kind {
    schema: NodeSchema,
    alive: Arc<AtomicUsize>,
}

impl NodeKind for Kind {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }
    fn run(&self, _: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        if self.schema.kind == "Load" {
            self.alive.fetch_add(1, Ordering::SeqCst);
            return Ok(vec![Value::payload(Loaded(self.alive.clone()))]);
        }
        if inputs.bool("fail")? { Err(NodeError::new("out of memory, say")) } else { Ok(vec![]) }
    }
}

/// `watch` after failing edits: each failed run used to be merged into the cache on top of the last, so ten edits
/// that each load another model and then fail kept eleven models alive. Now a failed run is merged with the last
/// good run only: at most that run's outputs and the failed run's stay.
#[test]
fn failing_edits_do_not_make_the_cache_grow() {
    let alive = Arc::new(AtomicUsize::new(0));
    let mut reg = graph::Registry::new();
    let load = NodeSchema::new("Load", "test", "Loads.").int("which", 0, 100, 0, "Which.").output(
        "model",
        PortType::Model,
        "",
    );
    let use_ =
        NodeSchema::new("Use", "test", "Uses.").input("model", PortType::Model, "").bool("fail", false, "").sink();
    for schema in [load, use_] {
        reg.register(Arc::new(Kind { schema, alive: alive.clone() })).unwrap();
    }
    let graph = |which: usize, fail: bool| {
        let text = format!(
            r#"(nodes: {{ "load": (kind: "Load", params: {{ "which": {which} }}),
                "use": (kind: "Use", inputs: {{ "model": "load.model" }}, params: {{ "fail": {fail} }}) }})"#
        );
        validate_str(&text, &reg).unwrap()
    };
    let (mut exec, dir) = (Executor::default(), crate::common::temp_dir("exec-failing-edits"));
    assert!(run(&mut exec, &graph(0, false), &dir).ok);
    for which in 1..=10 {
        assert!(!run(&mut exec, &graph(which, true), &dir).ok);
        assert_eq!(alive.load(Ordering::SeqCst), 2, "after failing edit {which}: the good run's model and this one's");
        // The good run's two entries (Load, Use) and this run's Load.
        assert_eq!(exec.cache().len(), 3, "after failing edit {which}");
    }
    // Undoing the edits finds the last good run's model still cached.
    let r = run(&mut exec, &graph(0, false), &dir);
    assert_eq!(r.ids_with(NodeStatus::Cached), ["load", "use"]);
    assert_eq!(alive.load(Ordering::SeqCst), 1);
}

/// `Pair` (params `x`, `y`) -> `x`, `y`; each output depends on its own param alone (`NodeKind::output_depends`),
/// as LoraLoader's CLIP depends on strength_clip and not on strength_model.
struct Pair(NodeSchema);

impl NodeKind for Pair {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }
    fn run(&self, _: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        Ok(vec![Value::Int(inputs.int("x")? as i64), Value::Int(inputs.int("y")? as i64)])
    }
    fn output_depends(&self, output: usize) -> Option<&'static [&'static str]> {
        Some(if output == 0 { &["x"] } else { &["y"] })
    }
}

/// Outputs with keys of their own: editing one param re-runs the node and the consumers of the output that
/// depends on it, not the other output's consumers.
#[test]
fn an_output_that_depends_on_fewer_params_keeps_its_consumers_cached() {
    let (_c, mut reg, mut exec, dir) = setup();
    let pair = NodeSchema::new("Pair", "test", "Two ints.")
        .int("x", -1000, 1000, 0, "x.")
        .int("y", -1000, 1000, 0, "y.")
        .output("x", PortType::Int, "x.")
        .output("y", PortType::Int, "y.");
    reg.register(Arc::new(Pair(pair))).unwrap();
    let graph = |x: i64, y: i64| {
        format!(
            r#"(nodes: {{
                "p": (kind: "Pair", params: {{ "x": {x}, "y": {y} }}),
                "on_x": (kind: "Add", inputs: {{ "a": "p.x", "b": "p.x" }}),
                "on_y": (kind: "Add", inputs: {{ "a": "p.y", "b": "p.y" }}),
                "both": (kind: "Add", inputs: {{ "a": "on_x.int", "b": "on_y.int" }}),
                "out": (kind: "Sink", inputs: {{ "a": "both.int" }}),
            }})"#
        )
    };
    let mut ran = |x, y| {
        let g = validate_str(&graph(x, y), &reg).unwrap();
        let r = run(&mut exec, &g, &dir);
        assert!(r.ok, "{:?}", r.errors());
        r.ids_with(NodeStatus::Executed).into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(ran(1, 2), ["p", "on_x", "on_y", "both", "out"]);
    assert_eq!(ran(5, 2), ["p", "on_x", "both", "out"]);
    assert_eq!(ran(5, 3), ["p", "on_y", "both", "out"]);
    assert!(ran(5, 3).is_empty());
}
