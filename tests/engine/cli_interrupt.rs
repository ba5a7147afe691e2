//! Ctrl-C during `sdgraph run`: the sampler stops at its next step, the run
//! exits with 130 and says so, and no picture or temporary file is left.

#[cfg(unix)]
#[test]
fn sigint_stops_a_long_sampling_run_cleanly() {
    use std::process::Stdio;

    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("interrupt");
    let graph = crate::cli_preview::txt2img(&dir, 10000);
    let out = dir.join("out");
    let mut child = crate::common::sdgraph_command()
        .args(["run", graph.to_str().unwrap(), "--out-dir", out.to_str().unwrap()])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the sampler reports its first steps.
    let (stderr, sent) = crate::common::interrupt_after(&mut child, "steps", "sampling never started");
    crate::cli_preview::stopped_within_20s_with_130(child, stderr, sent);
    let leftovers: Vec<_> =
        std::fs::read_dir(&out).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "files left behind: {leftovers:?}");
}
