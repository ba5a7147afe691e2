//! The executor: runs the needed nodes in order, reusing cached outputs
//! whose key is unchanged, and reports what it did.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use serde::Serialize;

use super::cache::{Cache, CacheKey, CachePolicy, node_key, output_key};
use super::progress::Progress;
use super::provenance::{FileDigest, digests};
use crate::ValidGraph;
use crate::node::{NodeInputs, ParamValue, RunContext};
use crate::schedule::execution_order;
use crate::value::Value;

/// What happened to one node in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Executed,
    Cached,
    Failed,
    /// Not run because a node it depends on failed, or the run was cancelled.
    Skipped,
}

impl NodeStatus {
    pub fn name(self) -> &'static str {
        match self {
            NodeStatus::Executed => "executed",
            NodeStatus::Cached => "cached",
            NodeStatus::Failed => "failed",
            NodeStatus::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub id: String,
    pub kind: String,
    pub status: NodeStatus,
    pub seconds: f64,
    /// Files the node wrote.
    pub outputs: Vec<PathBuf>,
    /// Preview pictures the node wrote (PreviewImage), outside the output folder.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub previews: Vec<PathBuf>,
    /// Files the node's result depends on (model weights), with their
    /// SHA-256; also listed for a cached node, whose outputs came from them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files_read: Vec<FileDigest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The machine-readable result of a run (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub ok: bool,
    pub cancelled: bool,
    pub seconds: f64,
    /// Nodes in execution order.
    pub nodes: Vec<NodeReport>,
}

impl RunReport {
    pub fn ids_with(&self, status: NodeStatus) -> Vec<&str> {
        self.nodes.iter().filter(|n| n.status == status).map(|n| n.id.as_str()).collect()
    }

    pub fn outputs(&self) -> Vec<&PathBuf> {
        self.nodes.iter().flat_map(|n| &n.outputs).collect()
    }

    /// The preview pictures of the run (PreviewImage), apart from the outputs.
    pub fn previews(&self) -> Vec<&PathBuf> {
        self.nodes.iter().flat_map(|n| &n.previews).collect()
    }

    /// Every file a node of the run recorded as read, with its SHA-256 (or
    /// why there is none), by path.
    pub fn files_read(&self) -> std::collections::BTreeMap<&PathBuf, &FileDigest> {
        self.nodes.iter().flat_map(|n| &n.files_read).map(|f| (&f.path, f)).collect()
    }

    /// `node "id" (Kind): message` for each failed node.
    pub fn errors(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter_map(|n| n.error.as_ref().map(|e| format!("node {:?} ({}): {e}", n.id, n.kind)))
            .collect()
    }
}

/// Everything about a run that is not in the graph.
pub struct RunOptions<'a> {
    /// Relative paths in params resolve against this (the graph file's folder).
    pub base_dir: PathBuf,
    pub out_dir: PathBuf,
    /// The graph as run, RON text, for embedding into outputs.
    pub graph_text: String,
    pub progress: &'a dyn Progress,
    pub cancel: Arc<AtomicBool>,
}

/// Runs graphs and keeps outputs between runs, so an edited graph re-runs
/// only what changed.
pub struct Executor {
    cache: Cache,
    /// The files each cached result was made from, so a run that reuses
    /// it still reports and embeds their digests.
    files_by_key: HashMap<CacheKey, Arc<Vec<PathBuf>>>,
}

impl Default for Executor {
    fn default() -> Self {
        Self::new(CachePolicy::LastRun)
    }
}

impl Executor {
    pub fn new(policy: CachePolicy) -> Self {
        Self { cache: Cache::new(policy), files_by_key: HashMap::new() }
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn run(&mut self, g: &ValidGraph, opts: &RunOptions<'_>) -> RunReport {
        let start = Instant::now();
        let order = execution_order(g);
        let mut run = RunState::with_capacity(order.len());
        let mut cancelled = false;
        for i in order {
            if opts.cancel.load(std::sync::atomic::Ordering::Relaxed) {
                cancelled = true;
                run.push(skipped(g, i), Arc::default());
                continue;
            }
            self.run_node(g, i, opts, &mut run);
        }
        let RunState { kept, run_files, mut reports, own_files, .. } = run;

        // Digests for the report: background hashing began when each file was
        // recorded, so this mostly collects finished work. Ctrl-C does not wait.
        for (report, files) in reports.iter_mut().zip(&own_files) {
            report.files_read = digests(files, &opts.cancel);
        }

        let ok = reports.iter().all(|r| matches!(r.status, NodeStatus::Executed | NodeStatus::Cached));
        if ok {
            self.cache.keep(kept);
            self.files_by_key = run_files;
        } else {
            self.cache.merge(kept);
            self.files_by_key.extend(run_files);
        }
        let cache = &self.cache;
        self.files_by_key.retain(|k, _| cache.get(*k).is_some());
        RunReport { ok, cancelled, seconds: start.elapsed().as_secs_f64(), nodes: reports }
    }

    /// Runs node `i`, or takes its outputs from the cache, or skips it when a
    /// node it depends on has no outputs; records what happened in `run`.
    fn run_node(&mut self, g: &ValidGraph, i: usize, opts: &RunOptions<'_>, run: &mut RunState) {
        let node = &g.nodes[i];
        let schema = node.kind.schema();
        let mut report = skipped(g, i);
        // A node whose producer failed or was skipped cannot run.
        let upstream: Option<Vec<CacheKey>> = node
            .inputs
            .iter()
            .map(|e| run.output_keys.get(&(e.from, e.output)).or(run.keys.get(&e.from)).copied())
            .collect();
        let Some(input_keys) = upstream else {
            run.push(report, Arc::default());
            return;
        };
        let inputs = gather_inputs(g, i, &run.outputs);
        let mut upstream_files: Vec<PathBuf> =
            node.inputs.iter().filter_map(|e| run.used.get(&e.from)).flatten().cloned().collect();
        upstream_files.sort();
        upstream_files.dedup();
        let mut ctx =
            RunContext::new(&node.id, &opts.base_dir, &opts.out_dir, &opts.graph_text, opts.progress, &opts.cancel);
        ctx.upstream_files = upstream_files;
        let fingerprint = node.kind.fingerprint(&ctx, &inputs);
        let key = node_key(node, &input_keys, fingerprint.as_deref());
        // Outputs that depend on fewer inputs than the node get keys of their own (used once it succeeds).
        let output_keys: Vec<((usize, usize), CacheKey)> = (0..schema.outputs.len())
            .filter_map(|o| {
                let depends = node.kind.output_depends(o)?;
                Some(((i, o), output_key(node, &input_keys, fingerprint.as_deref(), o, depends)))
            })
            .collect();

        if let Some(cached) = self.cache.get(key) {
            report.status = NodeStatus::Cached;
            opts.progress.node_end(&node.id, "cached", 0.0);
            let own = self.files_by_key.get(&key).cloned().unwrap_or_default();
            run.used.insert(i, union(ctx.upstream_files, &own));
            run.output_keys.extend(output_keys);
            run.succeed(i, key, cached, own.clone());
            run.push(report, own);
            return;
        }

        opts.progress.node_start(&node.id, &schema.kind);
        let t = Instant::now();
        // A bug in one node must not take down `watch` or lose other outputs.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| node.kind.run(&mut ctx, &inputs)));
        report.seconds = t.elapsed().as_secs_f64();
        report.outputs = std::mem::take(&mut ctx.files_written);
        report.previews = std::mem::take(&mut ctx.previews_written);
        let own = Arc::new(std::mem::take(&mut ctx.files_read));
        run.used.insert(i, union(std::mem::take(&mut ctx.upstream_files), &own));
        let result = match result {
            Ok(r) => r.map_err(|e| e.message),
            Err(panic) => Err(format!("internal error (panic): {}", panic_text(&panic))),
        };
        match result.and_then(|values| check_outputs(schema, values)) {
            Ok(values) => {
                report.status = NodeStatus::Executed;
                run.output_keys.extend(output_keys);
                run.succeed(i, key, Arc::new(values), own.clone());
            }
            Err(msg) => {
                report.status = NodeStatus::Failed;
                report.error = Some(msg);
            }
        }
        opts.progress.node_end(&node.id, report.status.name(), report.seconds);
        run.push(report, own);
    }
}

/// What one run has learned so far, per node (by index) and per cache key.
#[derive(Default)]
struct RunState {
    keys: HashMap<usize, CacheKey>,
    /// (node, output) -> the key of an output that depends on fewer inputs than the node.
    output_keys: HashMap<(usize, usize), CacheKey>,
    outputs: HashMap<usize, Arc<Vec<Value>>>,
    /// The outputs this run made or reused, to keep in the cache.
    kept: HashMap<CacheKey, Arc<Vec<Value>>>,
    /// Per node: the files it and everything upstream of it recorded.
    used: HashMap<usize, Vec<PathBuf>>,
    run_files: HashMap<CacheKey, Arc<Vec<PathBuf>>>,
    /// Nodes in execution order.
    reports: Vec<NodeReport>,
    /// Per report: the files the node itself recorded.
    own_files: Vec<Arc<Vec<PathBuf>>>,
}

impl RunState {
    fn with_capacity(n: usize) -> Self {
        Self { reports: Vec::with_capacity(n), own_files: Vec::with_capacity(n), ..Self::default() }
    }

    fn push(&mut self, report: NodeReport, own: Arc<Vec<PathBuf>>) {
        self.reports.push(report);
        self.own_files.push(own);
    }

    /// Node `i` has outputs under `key`, made from the files `own`.
    fn succeed(&mut self, i: usize, key: CacheKey, values: Arc<Vec<Value>>, own: Arc<Vec<PathBuf>>) {
        self.keys.insert(i, key);
        self.outputs.insert(i, values.clone());
        self.kept.insert(key, values);
        self.run_files.insert(key, own);
    }
}

/// Node `i`'s report before anything happened to it.
fn skipped(g: &ValidGraph, i: usize) -> NodeReport {
    let node = &g.nodes[i];
    NodeReport {
        id: node.id.clone(),
        kind: node.kind.schema().kind.clone(),
        status: NodeStatus::Skipped,
        seconds: 0.0,
        outputs: vec![],
        previews: vec![],
        files_read: vec![],
        error: None,
    }
}

/// `upstream` plus `own`, sorted, without repeats.
fn union(mut upstream: Vec<PathBuf>, own: &[PathBuf]) -> Vec<PathBuf> {
    upstream.extend_from_slice(own);
    upstream.sort();
    upstream.dedup();
    upstream
}

/// The values of node `i`'s inputs, and its params with linked ones filled in.
fn gather_inputs(g: &ValidGraph, i: usize, outputs: &HashMap<usize, Arc<Vec<Value>>>) -> NodeInputs {
    let node = &g.nodes[i];
    let mut inputs = NodeInputs { inputs: Default::default(), params: node.params.clone() };
    for e in &node.inputs {
        let Some(v) = outputs.get(&e.from).and_then(|o| o.get(e.output)) else { continue };
        if e.to_param {
            // Validation guarantees the types line up; an Int feeding a Float widens.
            let p = match v {
                Value::Int(x) => ParamValue::Int(i128::from(*x)),
                Value::Float(x) => ParamValue::Float(*x),
                Value::Bool(x) => ParamValue::Bool(*x),
                Value::String(x) => ParamValue::String(x.clone()),
                _ => continue,
            };
            inputs.params.insert(e.port.clone(), p);
        } else {
            inputs.inputs.insert(e.port.clone(), v.clone());
        }
    }
    inputs
}

/// A node must return one value per declared output, of the declared type.
fn check_outputs(schema: &crate::node::NodeSchema, values: Vec<Value>) -> Result<Vec<Value>, String> {
    if values.len() != schema.outputs.len() {
        return Err(format!(
            "returned {} outputs, but {} declares {}",
            values.len(),
            schema.kind,
            schema.outputs.len()
        ));
    }
    for (v, spec) in values.iter().zip(&schema.outputs) {
        if v.port_type() != spec.ty {
            return Err(format!(
                "output {:?} should be {} but the node returned {}",
                spec.name,
                spec.ty,
                v.port_type()
            ));
        }
    }
    Ok(values)
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}
