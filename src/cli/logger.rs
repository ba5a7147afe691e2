//! Messages from the libraries below the command (wgpu, naga, the drivers through wgpu) on stderr, filtered by
//! `RUST_LOG` as Rust tools do (`RUST_LOG=wgpu_hal=debug`); by default warnings and errors, so a driver problem is
//! seen rather than dropped.

/// Installs the logger once, before anything opens the GPU.
pub fn install() {
    let env = env_logger::Env::default().default_filter_or("warn");
    let mut builder = env_logger::Builder::from_env(env);
    builder.format(|out, record| {
        use std::io::Write;
        writeln!(out, "{}: [{}] {}", record.level().as_str().to_lowercase(), record.target(), record.args())
    });
    // A second install (tests calling main twice) keeps the first.
    let _ = builder.try_init();
}
