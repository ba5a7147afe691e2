//! The one thread that runs prompts, in queue order, on one executor: models stay loaded and unchanged
//! nodes of a resubmitted graph come from the cache. What happens is sent to WebSocket clients as
//! ComfyUI's messages (`execution_start`, `execution_cached`, `executing`, `progress`, `executed`,
//! `execution_success` / `execution_error` / `execution_interrupted`, binary preview frames).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use graph::exec::{Executor, NodeStatus, Progress, RunOptions, RunReport};
use serde_json::{Value as Json, json};
use tokio::sync::broadcast;

use super::journal::Finished;
use super::prepare::{Prepared, ServeCtx};
use super::queue::{Job, Queue};

/// Sampler steps between preview frames (the last step always sends one).
const PREVIEW_EVERY: u64 = 4;

/// A message for WebSocket clients: to the client with this id, or to all (`None`).
#[derive(Debug, Clone)]
pub struct Event {
    pub client: Option<String>,
    pub frame: Frame,
}

#[derive(Debug, Clone)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

/// Milliseconds since the Unix epoch, as ComfyUI's timestamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// `{"type": ty, "data": data}` to `client`.
pub fn message(client: Option<&str>, ty: &str, data: Json) -> Event {
    Event { client: client.map(str::to_string), frame: Frame::Text(json!({ "type": ty, "data": data }).to_string()) }
}

/// The `status` message every client gets when the queue changes.
pub fn status(queue: &Queue, sid: Option<&str>) -> Event {
    let mut data = json!({ "status": { "exec_info": { "queue_remaining": queue.remaining() } } });
    if let Some(sid) = sid {
        data["sid"] = sid.into();
    }
    message(sid, "status", data)
}

pub struct Worker {
    /// Send binary preview frames of the samplers (ComfyUI sends none unless started with a preview method).
    pub previews: bool,
    pub ctx: Arc<ServeCtx>,
    pub queue: Arc<Queue>,
    pub events: broadcast::Sender<Event>,
}

impl Worker {
    /// Runs prompts until the queue stops.
    pub fn run(self) {
        let mut exec = Executor::default();
        while let Some(job) = self.queue.next() {
            let _ = self.events.send(status(&self.queue, None));
            let (finished, last) = self.run_one(&mut exec, &job);
            if let Err(e) = self.queue.finish(finished) {
                eprintln!("error: the queue journal: {e}");
            }
            // The prompt's last messages only once its history is there: clients read it on them.
            for ev in last {
                let _ = self.events.send(ev);
            }
            let _ = self.events.send(status(&self.queue, None));
        }
    }

    /// How the prompt ended, and its last messages (sent once that is recorded).
    fn run_one(&self, exec: &mut Executor, job: &Job) -> (Finished, Vec<Event>) {
        let a = &job.accepted;
        let client = a.client_id.as_deref();
        let mut log = Log { events: &self.events, client, prompt_id: &a.id, messages: Vec::new(), last: Vec::new() };
        log.record("execution_start", json!({ "prompt_id": a.id, "timestamp": now_ms() }));
        let prepared = match self.ctx.prepare(&a.prompt) {
            Ok(p) => p,
            Err((errs, _)) => {
                let text: Vec<String> = errs.0.iter().map(|d| d.to_string()).collect();
                return log.error(&a.id, None, "", &text.join("\n"), "ValidationError");
            }
        };
        let progress = ClientProgress {
            previews: self.previews,
            events: &self.events,
            client,
            prompt_id: &a.id,
            ids: &prepared.comfy_ids,
        };
        let opts = RunOptions {
            base_dir: self.ctx.base_dir.clone(),
            out_dir: self.ctx.output_dir.clone(),
            graph_text: prepared.text.clone(),
            progress: &progress,
            cancel: job.cancel.clone(),
        };
        let report = exec.run(&prepared.graph, &opts);
        self.conclude(log, &prepared, &report)
    }

    /// The messages after a run, and its history entry.
    fn conclude(&self, mut log: Log<'_>, prepared: &Prepared, report: &RunReport) -> (Finished, Vec<Event>) {
        let id = log.prompt_id.to_string();
        let comfy = |n: &str| prepared.comfy_ids.get(n).cloned().unwrap_or_else(|| n.to_string());
        let cached: Vec<String> = report.ids_with(NodeStatus::Cached).into_iter().map(comfy).collect();
        log.record("execution_cached", json!({ "nodes": cached, "prompt_id": id, "timestamp": now_ms() }));
        let mut outputs = serde_json::Map::new();
        for n in &report.nodes {
            let images: Vec<Json> = (n.outputs.iter().map(|p| file_ref(p, &self.ctx.output_dir, "output")))
                .chain(n.previews.iter().map(|p| file_ref(p, &self.ctx.temp_dir, "temp")))
                .collect();
            if images.is_empty() {
                continue;
            }
            let node = comfy(&n.id);
            let output = json!({ "images": images });
            log.send("executed", json!({ "node": node, "display_node": node, "output": output, "prompt_id": id }));
            outputs.insert(node, output);
        }
        if report.cancelled {
            let executed: Vec<String> = report.ids_with(NodeStatus::Executed).into_iter().map(comfy).collect();
            let running = report.nodes.iter().find(|n| n.status == NodeStatus::Skipped);
            log.record_last(
                "execution_interrupted",
                json!({
                    "prompt_id": id,
                    "node_id": running.map(|n| comfy(&n.id)),
                    "node_type": running.map(|n| n.kind.clone()),
                    "executed": executed,
                    "timestamp": now_ms(),
                }),
            );
            return log.finish("error", outputs);
        }
        if let Some(failed) = report.nodes.iter().find(|n| n.status == NodeStatus::Failed) {
            let msg = failed.error.clone().unwrap_or_default();
            let (mut f, last) = log.error(&id, Some(&comfy(&failed.id)), &failed.kind, &msg, "NodeError");
            f.outputs = Json::Object(outputs);
            return (f, last);
        }
        log.send_last("executing", json!({ "node": null, "display_node": null, "prompt_id": id }));
        log.record_last("execution_success", json!({ "prompt_id": id, "timestamp": now_ms() }));
        log.finish("success", outputs)
    }
}

/// `{filename, subfolder, type}` of a file the run wrote under `dir`.
fn file_ref(path: &Path, dir: &Path, ty: &str) -> Json {
    let rel = path.strip_prefix(dir).unwrap_or(path);
    let filename = rel.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let subfolder = rel.parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    json!({ "filename": filename, "subfolder": subfolder, "type": ty })
}

/// The messages of one prompt: sent to its client, the status ones kept for its history; the last ones
/// held back until the history has the prompt.
struct Log<'a> {
    events: &'a broadcast::Sender<Event>,
    client: Option<&'a str>,
    prompt_id: &'a str,
    messages: Vec<Json>,
    last: Vec<Event>,
}

impl Log<'_> {
    fn send(&self, ty: &str, data: Json) {
        let _ = self.events.send(message(self.client, ty, data));
    }

    /// Sends and keeps for the history's `status.messages`.
    fn record(&mut self, ty: &str, data: Json) {
        self.send(ty, data.clone());
        self.messages.push(json!([ty, data]));
    }

    fn send_last(&mut self, ty: &str, data: Json) {
        self.last.push(message(self.client, ty, data));
    }

    fn record_last(&mut self, ty: &str, data: Json) {
        self.messages.push(json!([ty, data.clone()]));
        self.send_last(ty, data);
    }

    fn error(
        &mut self,
        id: &str,
        node: Option<&str>,
        kind: &str,
        msg: &str,
        exception: &str,
    ) -> (Finished, Vec<Event>) {
        self.record_last(
            "execution_error",
            json!({
                "prompt_id": id,
                "node_id": node,
                "node_type": kind,
                "executed": [],
                "exception_message": msg,
                "exception_type": exception,
                "traceback": [],
                "current_inputs": {},
                "current_outputs": {},
                "timestamp": now_ms(),
            }),
        );
        self.finish("error", serde_json::Map::new())
    }

    fn finish(&mut self, status: &str, outputs: serde_json::Map<String, Json>) -> (Finished, Vec<Event>) {
        let f = Finished {
            id: self.prompt_id.to_string(),
            status: status.into(),
            outputs: Json::Object(outputs),
            messages: Json::Array(std::mem::take(&mut self.messages)),
        };
        (f, std::mem::take(&mut self.last))
    }
}

/// The executor's progress as ComfyUI messages to the prompt's client.
struct ClientProgress<'a> {
    /// Whether to send preview frames (`--preview-method`).
    previews: bool,
    events: &'a broadcast::Sender<Event>,
    client: Option<&'a str>,
    prompt_id: &'a str,
    ids: &'a BTreeMap<String, String>,
}

impl ClientProgress<'_> {
    fn comfy<'b>(&'b self, id: &'b str) -> &'b str {
        self.ids.get(id).map_or(id, |s| s.as_str())
    }
}

impl Progress for ClientProgress<'_> {
    fn node_start(&self, id: &str, _kind: &str) {
        let node = self.comfy(id);
        let data = json!({ "node": node, "display_node": node, "prompt_id": self.prompt_id });
        let _ = self.events.send(message(self.client, "executing", data));
    }

    fn step(&self, id: &str, done: u64, total: u64, _what: &str) {
        let data = json!({ "value": done, "max": total, "prompt_id": self.prompt_id, "node": self.comfy(id) });
        let _ = self.events.send(message(self.client, "progress", data));
    }

    fn wants_preview(&self, _id: &str, done: u64, total: u64) -> bool {
        self.previews && self.events.receiver_count() > 0 && (done == total || done.is_multiple_of(PREVIEW_EVERY))
    }

    /// ComfyUI's binary preview frame: event type 1 (PREVIEW_IMAGE), image type 2 (PNG), the PNG.
    fn preview(&self, _id: &str, width: u32, height: u32, rgb: &[u8]) {
        let mut png = Vec::new();
        let ok = image::RgbImage::from_raw(width, height, rgb.to_vec())
            .is_some_and(|img| img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).is_ok());
        if ok {
            let mut frame = vec![0, 0, 0, 1, 0, 0, 0, 2];
            frame.extend(png);
            let _ = self.events.send(Event { client: self.client.map(str::to_string), frame: Frame::Binary(frame) });
        }
    }
}

/// Where a ComfyUI file reference (`/view`'s filename, subfolder, type) points, refusing anything
/// outside its folder (absolute paths, `..`, links out of it).
pub fn resolve_view(ctx: &ServeCtx, filename: &str, subfolder: &str, ty: &str) -> Result<PathBuf, String> {
    let dir = match ty {
        "output" | "" => &ctx.output_dir,
        "input" => &ctx.input_dir,
        "temp" => &ctx.temp_dir,
        other => return Err(format!("unknown type {other:?} (output, input or temp)")),
    };
    let rel = Path::new(subfolder).join(filename);
    if filename.is_empty() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(format!("{:?} is not a plain file name under the {ty} folder", rel.display().to_string()));
    }
    let path = dir.join(&rel);
    let (canon_dir, canon) =
        (dir.canonicalize().map_err(|e| e.to_string())?, path.canonicalize().map_err(|e| e.to_string())?);
    if !canon.starts_with(&canon_dir) {
        return Err("the file is outside its folder".into());
    }
    Ok(canon)
}
