//! `sdgraph serve`: ComfyUI's HTTP and WebSocket API over one executor, so ComfyUI's clients and
//! scripts work unchanged (ComfyUI API-format prompts; RON text as a documented extension). The queue
//! is journaled before `/prompt` answers and survives a crash; one worker thread runs prompts in order
//! with the models kept loaded; SIGTERM or Ctrl-C interrupts the running prompt (it runs again after a
//! restart) and keeps the queue.

mod http;
mod info;
mod journal;
mod prepare;
mod queue;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::broadcast;

use super::EXIT_INVALID;
use super::load::ModelPaths;
use prepare::ServeCtx;

/// What `sdgraph serve` was asked to do.
pub struct ServeArgs {
    pub listen: String,
    pub output_dir: PathBuf,
    pub input_dir: PathBuf,
    /// Where the queue journal lives.
    pub state_dir: PathBuf,
    pub auth_token: Option<String>,
    pub insecure: bool,
    /// Binary preview frames while sampling (ComfyUI's `--preview-method latent2rgb`; off as in ComfyUI).
    pub previews: bool,
    pub models: ModelPaths,
}

/// A fresh prompt or client id: 128 random bits as a UUID (version 4 layout), from the operating
/// system's hasher seeds, which std draws from its random source.
pub fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let half = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_u64(salt);
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        h.finish()
    };
    let (a, b) = (half(1), half(2));
    let b = (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    let a = (a & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}

/// Whether listening on `addr` reaches only this machine.
fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

pub fn serve(registry: graph::Registry, args: ServeArgs) -> i32 {
    let addr: SocketAddr = match args.listen.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: --listen {:?}: {e} (expected an address and port, e.g. 127.0.0.1:8188)", args.listen);
            return EXIT_INVALID;
        }
    };
    if !is_loopback(&addr) && args.auth_token.is_none() && !args.insecure {
        eprintln!(
            "error: --listen {addr} reaches other machines: give a token (--auth-token or SDGRAPH_AUTH_TOKEN; clients send \
             Authorization: Bearer <token>), or --insecure to serve anyone who can connect"
        );
        return EXIT_INVALID;
    }
    for dir in [&args.output_dir, &args.input_dir] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("error: {}: {e}", dir.display());
            return EXIT_INVALID;
        }
    }
    let (journal, replayed) = match journal::Journal::open(&args.state_dir) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("error: the queue journal: {e}");
            return EXIT_INVALID;
        }
    };
    if replayed.skipped > 0 {
        eprintln!("warning: the queue journal had {} unreadable lines (skipped)", replayed.skipped);
    }
    if !replayed.pending.is_empty() {
        eprintln!("{} prompts from before the restart are queued again", replayed.pending.len());
    }
    let temp_dir = nodes::image_nodes::previews_dir();
    let _ = std::fs::create_dir_all(&temp_dir);
    let ctx = Arc::new(ServeCtx {
        registry,
        models: args.models,
        output_dir: args.output_dir,
        input_dir: args.input_dir,
        temp_dir,
        base_dir: std::env::current_dir().unwrap_or_default(),
    });
    let queue = Arc::new(queue::Queue::new(journal, replayed));
    let (events, _) = broadcast::channel(1024);
    let object_info = Arc::new(info::object_info(&ctx, &ctx.registry));
    let app = http::App {
        ctx: ctx.clone(),
        queue: queue.clone(),
        events: events.clone(),
        token: args.auth_token.map(Into::into),
        object_info,
    };
    let worker = worker::Worker { previews: args.previews, ctx, queue: queue.clone(), events };
    let worker = std::thread::Builder::new().name("sdgraph-worker".into()).spawn(move || worker.run());
    let worker = match worker {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: cannot start the worker thread: {e}");
            return super::EXIT_FAILED;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the server: {e}");
            return super::EXIT_FAILED;
        }
    };
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        // Scripts and tests read the address (with --listen ...:0, the port the system chose).
        eprintln!("sdgraph serve: listening on http://{local}");
        let server = axum::serve(listener, http::router(app));
        tokio::select! {
            r = server => r.map_err(|e| e.to_string()),
            () = shutdown_signal() => {
                eprintln!("sdgraph serve: stopping (the queue is kept; an interrupted prompt runs again after a restart)");
                Ok(())
            }
        }
    });
    queue.stop();
    let _ = worker.join();
    match served {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            super::EXIT_FAILED
        }
    }
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
