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

#[cfg(unix)]
extern "C" fn on_sigint(_: libc::c_int) {
    // Only atomics and _exit: both are async-signal-safe.
    if let Some(flag) = FLAG.get() {
        if flag.swap(true, Ordering::SeqCst) {
            unsafe { libc::_exit(130) };
        }
    } else {
        unsafe { libc::_exit(130) };
    }
}

#[cfg(unix)]
fn install() {
    let handler: extern "C" fn(libc::c_int) = on_sigint;
    // SAFETY: the handler only touches atomics and calls _exit.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}

#[cfg(not(unix))]
fn install() {}
