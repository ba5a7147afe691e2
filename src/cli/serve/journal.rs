//! The queue's journal: one JSON line per event (a prompt accepted, finished or deleted), appended and
//! fsynced before the HTTP answer goes out, so nothing accepted is lost. Read back at start-up: prompts
//! accepted and neither finished nor deleted run again (the one running at a crash included); finished
//! ones are the history.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// One accepted prompt, as `/prompt` took it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Accepted {
    pub id: String,
    /// ComfyUI's queue number: the order prompts run in.
    pub number: i64,
    /// The graph: ComfyUI's API format, or RON text (an sdgraph extension) as a JSON string.
    pub prompt: Json,
    pub client_id: Option<String>,
    pub extra_data: Json,
}

/// How a prompt ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Finished {
    pub id: String,
    /// "success" or "error" (an interrupted prompt is "error" too, as in ComfyUI, with its message).
    pub status: String,
    /// ComfyUI's history outputs: `{node id: {"images": [{filename, subfolder, type}]}}`.
    pub outputs: Json,
    /// ComfyUI's status messages: `[["execution_start", {...}], ...]`.
    pub messages: Json,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Line {
    Accepted(Accepted),
    Finished(Finished),
    Deleted { id: String },
}

/// What the journal held at start-up.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Prompts to run, in queue order.
    pub pending: Vec<Accepted>,
    /// Finished prompts, in the order they finished, with what was accepted.
    pub history: Vec<(Accepted, Finished)>,
    /// Lines that could not be read (a torn last line after a crash), skipped.
    pub skipped: usize,
}

/// The open journal file.
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens (creating) `dir/queue.jsonl` and reads back what it holds.
    pub fn open(dir: &Path) -> Result<(Journal, Replayed), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("queue.jsonl");
        let replayed = if path.exists() { replay(&path)? } else { Replayed::default() };
        let mut file =
            OpenOptions::new().create(true).append(true).open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // A line torn by a crash must not swallow the next one.
        let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if text.last().is_some_and(|&b| b != b'\n') {
            file.write_all(b"\n").map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok((Journal { path, file }, replayed))
    }

    pub fn accepted(&mut self, a: &Accepted) -> Result<(), String> {
        self.append(&Line::Accepted(a.clone()))
    }

    pub fn finished(&mut self, f: &Finished) -> Result<(), String> {
        self.append(&Line::Finished(f.clone()))
    }

    pub fn deleted(&mut self, id: &str) -> Result<(), String> {
        self.append(&Line::Deleted { id: id.to_string() })
    }

    /// One line, then fsync: the caller answers only once it is on disk.
    fn append(&mut self, line: &Line) -> Result<(), String> {
        let mut text = serde_json::to_string(line).map_err(|e| e.to_string())?;
        text.push('\n');
        self.file.write_all(text.as_bytes()).map_err(|e| format!("{}: {e}", self.path.display()))?;
        self.file.sync_data().map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

fn replay(path: &Path) -> Result<Replayed, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut accepted: Vec<Accepted> = Vec::new();
    let mut out = Replayed::default();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(&line) {
            Ok(Line::Accepted(a)) => accepted.push(a),
            Ok(Line::Finished(f)) => {
                if let Some(i) = accepted.iter().position(|a| a.id == f.id) {
                    out.history.push((accepted.remove(i), f));
                }
            }
            Ok(Line::Deleted { id }) => {
                accepted.retain(|a| a.id != id);
                out.history.retain(|(a, _)| a.id != id);
            }
            Err(_) => out.skipped += 1,
        }
    }
    accepted.sort_by_key(|a| a.number);
    out.pending = accepted;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(id: &str, number: i64) -> Accepted {
        Accepted { id: id.into(), number, prompt: Json::Null, client_id: None, extra_data: Json::Null }
    }

    #[test]
    fn replay_keeps_unfinished_prompts_in_order_and_finished_ones_as_history() {
        let dir = std::env::temp_dir().join(format!("sdgraph-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let (mut j, r) = Journal::open(&dir).unwrap();
            assert!(r.pending.is_empty() && r.history.is_empty());
            for (id, n) in [("a", 0), ("b", 1), ("c", 2), ("d", 3)] {
                j.accepted(&accepted(id, n)).unwrap();
            }
            let done = Finished { id: "b".into(), status: "success".into(), outputs: Json::Null, messages: Json::Null };
            j.finished(&done).unwrap();
            j.deleted("c").unwrap();
        }
        // A torn line, as a crash in the middle of a write leaves it.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("queue.jsonl"))
            .unwrap()
            .write_all(b"{\"op\":\"acc")
            .unwrap();
        let (mut j, r) = Journal::open(&dir).unwrap();
        j.accepted(&accepted("e", 4)).unwrap();
        let (_, r2) = Journal::open(&dir).unwrap();
        assert_eq!(r2.pending.len(), 3, "the line after a torn one is read");
        let pending: Vec<&str> = r.pending.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(pending, ["a", "d"]);
        assert_eq!(r.history.len(), 1);
        assert_eq!((r.history[0].0.id.as_str(), r.history[0].1.status.as_str()), ("b", "success"));
        assert_eq!(r.skipped, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
