//! Progress on stderr: one line per node, and a redrawn line for steps on a
//! terminal; where stderr is a file or a pipe (logs, CI) every step is a plain
//! line instead, since `\r` redraws pile up there.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use graph::exec::Progress;

pub struct StderrProgress {
    /// Serialises writes so concurrent nodes do not interleave lines.
    lock: Mutex<()>,
    /// Whether stderr is a terminal, where a bar can be redrawn in place.
    terminal: bool,
}

impl StderrProgress {
    pub fn new() -> Self {
        Self { lock: Mutex::new(()), terminal: std::io::stderr().is_terminal() }
    }
}

impl Progress for StderrProgress {
    fn node_start(&self, id: &str, kind: &str) {
        let _g = self.lock.lock();
        eprintln!("[{id}] {kind} ...");
    }

    fn node_end(&self, id: &str, status: &str, seconds: f64) {
        let _g = self.lock.lock();
        if status == "cached" {
            eprintln!("[{id}] cached");
        } else {
            eprintln!("[{id}] {status} in {seconds:.2}s");
        }
    }

    fn step(&self, id: &str, done: u64, total: u64, what: &str) {
        let _g = self.lock.lock();
        if !self.terminal {
            eprintln!("[{id}] {done}/{total} {what}");
            return;
        }
        let width = 30usize;
        let filled = (done.min(total) as usize * width).checked_div(total as usize).unwrap_or(width);
        let bar: String = "#".repeat(filled) + &"-".repeat(width - filled);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r[{id}] [{bar}] {done}/{total} {what}");
        if done >= total {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }

    fn message(&self, text: &str) {
        let _g = self.lock.lock();
        eprintln!("{text}");
    }
}
