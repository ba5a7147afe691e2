//! Ctrl-C during `sdgraph run`: the sampler stops at its next step, the run
//! exits with 130 and says so, and no picture or temporary file is left.

#[cfg(unix)]
#[test]
fn sigint_stops_a_long_sampling_run_cleanly() {
    use std::process::Stdio;
    use std::time::Duration;

    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("interrupt");
    let ckpt = crate::common::sd_tiny::full_vocab_checkpoint(&dir);
    let graph = dir.join("long.ron");
    std::fs::write(
        &graph,
        format!(
            r#"(nodes: {{
    "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": {ckpt:?} }}),
    "pos": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "a fox" }}),
    "neg": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "" }}),
    "empty": (kind: "EmptyLatentImage", params: {{ "width": 64, "height": 64 }}),
    "sample": (kind: "KSampler", inputs: {{ "model": "ckpt.model", "positive": "pos.conditioning",
               "negative": "neg.conditioning", "latent_image": "empty.latent" }}, params: {{ "steps": 10000 }}),
    "dec": (kind: "VAEDecode", inputs: {{ "samples": "sample.latent", "vae": "ckpt.vae" }}),
    "save": (kind: "SaveImage", inputs: {{ "images": "dec.image" }}),
}})"#
        ),
    )
    .unwrap();
    let out = dir.join("out");
    let mut child = crate::common::sdgraph_command()
        .args(["run", graph.to_str().unwrap(), "--out-dir", out.to_str().unwrap()])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the sampler reports its first steps.
    let (mut stderr, sent) = crate::common::interrupt_after(&mut child, "steps", "sampling never started");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(sent.elapsed() < Duration::from_secs(20), "took {:?} to stop", sent.elapsed());
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("cancelled"), "{rest}");
    let leftovers: Vec<_> =
        std::fs::read_dir(&out).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "files left behind: {leftovers:?}");
}
