//! Ctrl-C: the first SIGINT asks the running graph to stop (nodes poll the
//! cancel flag between steps, and SaveImage never leaves a half-written
//! file); a second one exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// The cancel flag SIGINT sets, with the handler installed on first call.
pub fn cancel_flag() -> Arc<AtomicBool> {
    FLAG.get_or_init(|| {
        install();
        Arc::new(AtomicBool::new(false))
    })
    .clone()
}

/// Whether Ctrl-C was pressed.
pub fn interrupted() -> bool {
    FLAG.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

/// Installs the handler. `ctrlc` runs it on a thread of its own (not in a signal context), on Unix for SIGINT and
/// on Windows for the console's Ctrl-C and Ctrl-Break.
fn install() {
    let installed = ctrlc::set_handler(|| match FLAG.get() {
        Some(flag) if !flag.swap(true, Ordering::SeqCst) => {}
        _ => std::process::exit(130),
    });
    if let Err(e) = installed {
        eprintln!("warning: Ctrl-C will not stop the run cleanly: {e}");
    }
}
