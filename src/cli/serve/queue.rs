//! The prompt queue the HTTP handlers and the one worker share: pending prompts in queue order, the one
//! running (with its interrupt flag), the history of finished ones; every change journaled first.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use serde_json::Value as Json;

use super::journal::{Accepted, Finished, Journal, Replayed};

/// ComfyUI keeps this many finished prompts in its history.
const MAX_HISTORY: usize = 10_000;

pub struct Queue {
    inner: Mutex<Inner>,
    wake: Condvar,
}

struct Inner {
    journal: Journal,
    pending: VecDeque<Accepted>,
    running: Option<(Accepted, Arc<AtomicBool>)>,
    history: VecDeque<(Accepted, Finished)>,
    /// The next number at the back of the queue; numbers at the front go below `front`.
    next_back: i64,
    next_front: i64,
    stopping: bool,
}

/// A prompt handed to the worker, with the flag `/interrupt` sets.
pub struct Job {
    pub accepted: Accepted,
    pub cancel: Arc<AtomicBool>,
}

impl Queue {
    pub fn new(journal: Journal, replayed: Replayed) -> Queue {
        let next_back = replayed
            .pending
            .iter()
            .map(|a| a.number)
            .chain(replayed.history.iter().map(|(a, _)| a.number))
            .max()
            .map_or(0, |n| n + 1);
        let next_front = replayed.pending.iter().map(|a| a.number).min().map_or(-1, |n| n.min(0) - 1);
        let mut history: VecDeque<_> = replayed.history.into();
        while history.len() > MAX_HISTORY {
            history.pop_front();
        }
        Queue {
            inner: Mutex::new(Inner {
                journal,
                pending: replayed.pending.into(),
                running: None,
                history,
                next_back,
                next_front,
                stopping: false,
            }),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every change is one push or pop).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Journals and queues a prompt (at the front when `front`); its number.
    pub fn submit(
        &self,
        id: String,
        prompt: Json,
        client_id: Option<String>,
        extra_data: Json,
        front: bool,
    ) -> Result<i64, String> {
        let mut q = self.lock();
        let number = if front { q.next_front } else { q.next_back };
        let a = Accepted { id, number, prompt, client_id, extra_data };
        q.journal.accepted(&a)?;
        if front {
            q.next_front -= 1;
            q.pending.push_front(a);
        } else {
            q.next_back += 1;
            q.pending.push_back(a);
        }
        drop(q);
        self.wake.notify_all();
        Ok(number)
    }

    /// The next prompt to run, waiting for one; `None` once [`Queue::stop`] was called.
    pub fn next(&self) -> Option<Job> {
        let mut q = self.lock();
        loop {
            if q.stopping {
                return None;
            }
            if let Some(a) = q.pending.pop_front() {
                let cancel = Arc::new(AtomicBool::new(false));
                q.running = Some((a.clone(), cancel.clone()));
                return Some(Job { accepted: a, cancel });
            }
            q = self.wake.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Records how the running prompt ended. An interrupted run at shutdown is not recorded: it stays
    /// in the journal as accepted, and runs again after a restart.
    pub fn finish(&self, f: Finished) -> Result<(), String> {
        let mut q = self.lock();
        let Some((a, _)) = q.running.take() else { return Ok(()) };
        if q.stopping && f.status != "success" {
            return Ok(());
        }
        q.journal.finished(&f)?;
        q.history.push_back((a, f));
        if q.history.len() > MAX_HISTORY {
            q.history.pop_front();
        }
        Ok(())
    }

    /// Removes pending prompts by id (`None`: all of them); how many went.
    pub fn delete_pending(&self, ids: Option<&[String]>) -> Result<usize, String> {
        let mut q = self.lock();
        let gone: Vec<String> =
            q.pending.iter().filter(|a| ids.is_none_or(|ids| ids.contains(&a.id))).map(|a| a.id.clone()).collect();
        for id in &gone {
            q.journal.deleted(id)?;
        }
        q.pending.retain(|a| !gone.contains(&a.id));
        Ok(gone.len())
    }

    /// Removes finished prompts from the history by id (`None`: all of it).
    pub fn delete_history(&self, ids: Option<&[String]>) -> Result<(), String> {
        let mut q = self.lock();
        let gone: Vec<String> = q
            .history
            .iter()
            .filter(|(a, _)| ids.is_none_or(|ids| ids.contains(&a.id)))
            .map(|(a, _)| a.id.clone())
            .collect();
        for id in &gone {
            q.journal.deleted(id)?;
        }
        q.history.retain(|(a, _)| !gone.contains(&a.id));
        Ok(())
    }

    /// Sets the running prompt's interrupt flag (only if it is `id`, when given); whether one was set.
    pub fn interrupt(&self, id: Option<&str>) -> bool {
        let q = self.lock();
        match &q.running {
            Some((a, flag)) if id.is_none_or(|id| id == a.id) => {
                flag.store(true, Ordering::SeqCst);
                true
            }
            _ => false,
        }
    }

    /// Stops handing out prompts and interrupts the running one (which stays in the journal, to run
    /// again after a restart).
    pub fn stop(&self) {
        let mut q = self.lock();
        q.stopping = true;
        if let Some((_, flag)) = &q.running {
            flag.store(true, Ordering::SeqCst);
        }
        drop(q);
        self.wake.notify_all();
    }

    /// Pending prompts plus the running one.
    pub fn remaining(&self) -> usize {
        let q = self.lock();
        q.pending.len() + usize::from(q.running.is_some())
    }

    /// ComfyUI's `GET /queue`: `queue_running` and `queue_pending`, each a list of
    /// `[number, prompt_id, prompt, extra_data, outputs_to_execute]`.
    pub fn snapshot(&self) -> Json {
        let q = self.lock();
        let item = |a: &Accepted| serde_json::json!([a.number, a.id, a.prompt, a.extra_data, []]);
        serde_json::json!({
            "queue_running": q.running.iter().map(|(a, _)| item(a)).collect::<Vec<_>>(),
            "queue_pending": q.pending.iter().map(item).collect::<Vec<_>>(),
        })
    }

    /// ComfyUI's `GET /history[/{id}]`: `{prompt_id: {prompt, outputs, status}}`, the newest
    /// `max_items` (all when `None`), or the one prompt `id`.
    pub fn history(&self, id: Option<&str>, max_items: Option<usize>) -> Json {
        let q = self.lock();
        let mut out = serde_json::Map::new();
        let entries: Vec<&(Accepted, Finished)> = match id {
            Some(id) => q.history.iter().filter(|(a, _)| a.id == id).collect(),
            None => {
                let skip = max_items.map_or(0, |m| q.history.len().saturating_sub(m));
                q.history.iter().skip(skip).collect()
            }
        };
        for (a, f) in entries {
            out.insert(
                a.id.clone(),
                serde_json::json!({
                    "prompt": [a.number, a.id, a.prompt, a.extra_data, []],
                    "outputs": f.outputs,
                    "status": {
                        "status_str": f.status,
                        "completed": f.status == "success",
                        "messages": f.messages,
                    },
                    "meta": {},
                }),
            );
        }
        Json::Object(out)
    }
}
