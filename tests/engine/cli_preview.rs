//! `sdgraph run --preview DIR`: KSampler's latent-to-RGB previews; `--json`
//! keeps stderr free of progress unless `--progress`; and Ctrl-C during a
//! run with both leaves previews whole and no temporary or partial file.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A txt2img graph of `steps` steps on the tiny checkpoint, written into `dir`.
pub(crate) fn txt2img(dir: &Path, steps: u32) -> PathBuf {
    let ckpt = crate::common::sd_tiny::full_vocab_checkpoint(dir);
    let graph = dir.join("txt2img.ron");
    std::fs::write(
        &graph,
        format!(
            r#"(nodes: {{
    "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": {ckpt:?} }}),
    "pos": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "a fox" }}),
    "neg": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "" }}),
    "empty": (kind: "EmptyLatentImage", params: {{ "width": 64, "height": 48 }}),
    "sample": (kind: "KSampler", inputs: {{ "model": "ckpt.model", "positive": "pos.conditioning",
               "negative": "neg.conditioning", "latent_image": "empty.latent" }}, params: {{ "steps": {steps} }}),
    "dec": (kind: "VAEDecode", inputs: {{ "samples": "sample.latent", "vae": "ckpt.vae" }}),
    "save": (kind: "SaveImage", inputs: {{ "images": "dec.image" }}),
}})"#
        ),
    )
    .unwrap();
    graph
}

fn sdgraph(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sdgraph"));
    c.args(args).env("SDGRAPH_CACHE_DIR", dir.join("cache"));
    c
}

/// `sdgraph run GRAPH --out-dir OUT --json --preview PREV`, then `extra`.
fn json_run_with_previews(dir: &Path, graph: &Path, out: &Path, prev: &Path, extra: &[&str]) -> Command {
    let mut args = vec!["run", graph.to_str().unwrap(), "--out-dir", out.to_str().unwrap(), "--json"];
    args.extend(["--preview", prev.to_str().unwrap()]);
    args.extend(extra);
    sdgraph(dir, &args)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn preview_writes_an_8x_latent_picture_and_json_runs_draw_no_progress() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("cli-preview");
    let graph = txt2img(&dir, 3);
    let (out, prev) = (dir.join("out"), dir.join("prev"));
    let o = json_run_with_previews(&dir, &graph, &out, &prev, &["--preview-every", "2"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["ok"], true);
    // --json alone: no node lines, bars or loading messages on stderr.
    for progress in ["[ckpt]", "[sample]", "steps", "loading"] {
        assert!(!stderr.contains(progress), "{progress:?} in {stderr}");
    }

    assert_eq!(names(&prev), ["preview_sample.png"], "one preview per sampler, no temporary files");
    let pic = image::open(prev.join("preview_sample.png")).unwrap().to_rgb8();
    // A 64x48 picture has an 8x6 latent, shown 8x as big.
    assert_eq!(pic.dimensions(), (64, 48));
    // Nearest enlargement: every 8x8 block is one latent position's colour...
    for (x, y, px) in pic.enumerate_pixels() {
        assert_eq!(px, pic.get_pixel(x / 8 * 8, y / 8 * 8), "({x}, {y})");
    }
    // ...and the positions differ (a picture, not a flat fill).
    let first = pic.get_pixel(0, 0);
    assert!(pic.pixels().any(|p| p != first), "the preview is one flat colour");

    // --progress brings the progress back alongside the JSON report.
    let o =
        sdgraph(&dir, &["run", graph.to_str().unwrap(), "--out-dir", out.to_str().unwrap(), "--json", "--progress"])
            .output()
            .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("[sample]") && stderr.contains("3/3 steps"), "{stderr}");
    serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("stdout is still only the JSON report");
}

#[test]
fn bad_preview_options_are_usage_errors() {
    let dir = crate::common::temp_dir("cli-preview-bad");
    let graph = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/resize.ron");
    let g = graph.to_str().unwrap();
    let o = sdgraph(&dir, &["run", g, "--preview", "p", "--preview-every", "0"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    std::fs::write(dir.join("file"), b"").unwrap();
    let blocked = dir.join("file/previews");
    let o = sdgraph(&dir, &["run", g, "--out-dir", dir.to_str().unwrap(), "--preview", blocked.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot create preview folder"));
    let o = sdgraph(&dir, &["run", g, "--quiet", "--progress"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "--quiet and --progress conflict");
}

#[cfg(unix)]
#[test]
fn ctrl_c_during_a_json_run_with_previews_exits_130_and_leaves_no_partial_files() {
    use std::io::Read;

    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("cli-cancel");
    let graph = txt2img(&dir, 10000);
    let (out, prev) = (dir.join("out"), dir.join("prev"));
    let mut child = json_run_with_previews(&dir, &graph, &out, &prev, &["--progress", "--preview-every", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for a few sampler steps (a preview is rewritten at each).
    let (stderr, sent) = crate::common::interrupt_after(&mut child, "3/10000 steps", "sampling never got going");
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    stopped_within_20s_with_130(child, stderr, sent);
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report even when cancelled");
    assert_eq!((report["ok"].clone(), report["cancelled"].clone()), (false.into(), true.into()));

    assert!(names(&out).is_empty(), "files left in the output folder: {:?}", names(&out));
    // The preview is whole (renamed into place), and no temporary file is left beside it.
    assert_eq!(names(&prev), ["preview_sample.png"]);
    assert_eq!(image::open(prev.join("preview_sample.png")).unwrap().to_rgb8().dimensions(), (64, 48));
}

/// Where stderr is not a terminal (a log file, CI), progress comes as plain lines, one per step, with no `\r`
/// redraws piling up in the log.
#[test]
fn progress_into_a_pipe_is_plain_lines_without_redraws() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("cli-plain-progress");
    let graph = txt2img(&dir, 3);
    let o = sdgraph(&dir, &["run", graph.to_str().unwrap(), "--out-dir", dir.join("out").to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains('\r'), "redraws in a pipe: {err:?}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("[sample] ") && l.contains(" steps")).collect();
    assert_eq!(lines, ["[sample] 1/3 steps", "[sample] 2/3 steps", "[sample] 3/3 steps"], "{err}");
}

/// After Ctrl-C went at `sent`: the run stopped within 20 s, exited 130 and said "cancelled" on stderr (returned).
#[cfg(unix)]
pub(crate) fn stopped_within_20s_with_130(
    mut child: std::process::Child,
    mut stderr: std::io::BufReader<std::process::ChildStderr>,
    sent: std::time::Instant,
) -> String {
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(sent.elapsed() < std::time::Duration::from_secs(20), "took {:?} to stop", sent.elapsed());
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("cancelled"), "{rest}");
    rest
}
