//! graphs/controlnet_canny.ron end to end on the tiny fixtures (sd_tiny with a
//! full-vocabulary CLIP, the tiny ControlNet), with `--set` overrides as the
//! CLI applies them: the control changes the picture, strength 0 and an empty
//! schedule range are exactly no control, both ControlNet layouts give the
//! same picture, and the unbatched (positive-only control) path runs.
//!
//! And both ControlNet example graphs as shipped (the demo model and the demo
//! ControlNets of assets/demo): the shape lands where the control picture has
//! it, against the place the prompt names, and without the control it does not.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::common::sd_tiny::full_vocab_checkpoint;
use crate::demo_model::{COLOURS, Seen, measure, nearest_colour};
use graph::exec::{Executor, NoProgress, RunOptions, RunReport};
use graph::{self, SetOverride};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn controlnet_fixture(p: &str) -> PathBuf {
    root().join("tests/fixtures/controlnet").join(p)
}

/// Runs the example graph with overrides (optionally with text edits) and
/// returns the decoded picture's RGB bytes and the edge map's.
fn run(ckpt: &Path, cnet: &Path, sets: &[&str], edit: Option<(&str, &str)>, out: &Path) -> (Vec<u8>, Vec<u8>) {
    let report = run_report(ckpt, cnet, sets, edit, out);
    assert!(report.ok, "{:?}", report.errors());
    let read = |name: &str| image::open(out.join(name)).unwrap().to_rgb8().into_raw();
    (read("controlnet_canny_00001.png"), read("canny_edges_00001.png"))
}

/// The example graph's run report, as [`run`] runs it.
fn run_report(ckpt: &Path, cnet: &Path, sets: &[&str], edit: Option<(&str, &str)>, out: &Path) -> RunReport {
    let path = root().join("graphs/controlnet_canny.ron");
    let mut text = std::fs::read_to_string(&path).unwrap();
    if let Some((from, to)) = edit {
        assert!(text.contains(from), "the graph no longer has {from:?}");
        text = text.replace(from, to);
    }
    let mut g = graph::parse_graph(&path.display().to_string(), text.as_bytes()).unwrap();
    let mut all = vec![
        format!("ckpt.ckpt_name={:?}", ckpt.display().to_string()),
        format!("cnet.control_net_name={:?}", cnet.display().to_string()),
        // The tiny UNet at a 64x64 image -> 8x8 latent (the tiny VAE decodes it to 16x16), 3 steps.
        "empty.width=64".into(),
        "empty.height=64".into(),
        "sample.steps=3".into(),
    ];
    all.extend(sets.iter().map(|s| s.to_string()));
    let sets: Vec<SetOverride> = all.iter().map(|s| SetOverride::parse(s).unwrap()).collect();
    g.apply_overrides(&sets).unwrap();
    let reg = nodes::builtin_registry();
    let g = graph::validate(g, &reg).unwrap_or_else(|e| panic!("{e}"));
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    Executor::default().run(&g, &example_options(out, text))
}

/// How the example graphs run here: their paths resolve against `graphs/`, their pictures go to `out`.
fn example_options(out: &Path, graph_text: String) -> RunOptions<'static> {
    RunOptions {
        base_dir: root().join("graphs"),
        out_dir: out.to_path_buf(),
        graph_text,
        progress: &NoProgress,
        cancel: Arc::new(AtomicBool::new(false)),
    }
}

/// A test folder holding the full-vocabulary tiny checkpoint; `None` where GPU tests are skipped.
fn tiny_checkpoint_in(name: &str) -> Option<(crate::common::TempDir, PathBuf)> {
    gpu::testing::shared_gpu()?;
    let dir = crate::common::temp_dir(name);
    let ckpt = full_vocab_checkpoint(&dir);
    Some((dir, ckpt))
}

fn differing(a: &[u8], b: &[u8]) -> usize {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

const NO_CONTROL: (&str, &str) = (
    r#""positive": "apply.positive", "negative": "apply.negative""#,
    r#""positive": "pos.conditioning", "negative": "neg.conditioning""#,
);
const POSITIVE_ONLY: (&str, &str) = (
    r#""positive": "apply.positive", "negative": "apply.negative""#,
    r#""positive": "apply.positive", "negative": "neg.conditioning""#,
);

#[test]
fn controlnet_canny_graph_is_steered_by_the_control_and_strength_zero_is_no_control() {
    let Some((dir, ckpt)) = tiny_checkpoint_in("controlnet-graph") else { return };
    let ldm = controlnet_fixture("control_ldm.safetensors");
    let out = |n: &str| dir.join(n);

    let (plain, _) = run(&ckpt, &ldm, &[], Some(NO_CONTROL), &out("plain"));
    let (controlled, edges) = run(&ckpt, &ldm, &[], None, &out("controlled"));
    assert_eq!(plain.len(), 16 * 16 * 3, "a 16x16 picture");
    // The Canny map of the 64x64 control picture, saved at its own size.
    assert_eq!(edges.len(), 64 * 64 * 3);
    assert!(edges.iter().all(|&v| v == 0 || v == 255) && edges.contains(&255));
    let changed = differing(&plain, &controlled);
    eprintln!("the control changed {changed} of {} bytes", plain.len());
    assert!(changed > plain.len() / 2, "the control barely changed the picture ({changed})");

    // Strength 0 and a control active over no step are exactly no control.
    let (zero, _) = run(&ckpt, &ldm, &["apply.strength=0.0"], None, &out("zero"));
    assert_eq!(zero, plain, "strength 0 must equal no ControlNet");
    let (never, _) = run(&ckpt, &ldm, &["apply.end_percent=0.0"], None, &out("never"));
    assert_eq!(never, plain, "a control that ends at 0% must equal no ControlNet");

    // Only the later part of the schedule: neither the full control nor none.
    let (late, _) = run(&ckpt, &ldm, &["apply.start_percent=0.5"], None, &out("late"));
    assert!(differing(&late, &plain) > 0 && differing(&late, &controlled) > 0);

    // A weaker control lands nearer the uncontrolled picture.
    let (weak, _) = run(&ckpt, &ldm, &["apply.strength=0.1"], None, &out("weak"));
    let dist = |a: &[u8], b: &[u8]| a.iter().zip(b).map(|(x, y)| (*x as i64 - *y as i64).abs()).sum::<i64>();
    assert!(dist(&weak, &plain) < dist(&controlled, &plain));

    // The diffusers layout of the same ControlNet gives the same picture.
    let (diffusers, _) = run(&ckpt, &controlnet_fixture("diffusers"), &[], None, &out("diffusers"));
    assert_eq!(diffusers, controlled);

    // Control on the positive prompt only: cond and uncond run separately.
    let (pos_only, _) = run(&ckpt, &ldm, &[], Some(POSITIVE_ONLY), &out("pos_only"));
    assert!(differing(&pos_only, &plain) > 0 && differing(&pos_only, &controlled) > 0);
    // cfg 1 runs the positive prompt alone (ComfyUI's shortcut), with its control.
    let (cfg1, _) = run(&ckpt, &ldm, &["sample.cfg=1.0"], None, &out("cfg1"));
    let (cfg1_plain, _) = run(&ckpt, &ldm, &["sample.cfg=1.0"], Some(NO_CONTROL), &out("cfg1_plain"));
    assert!(differing(&cfg1, &cfg1_plain) > 0);
}

#[test]
fn a_file_that_is_not_a_controlnet_fails_the_loader_node_naming_the_param() {
    let Some((dir, ckpt)) = tiny_checkpoint_in("controlnet-misfit") else { return };
    // A checkpoint given as the ControlNet.
    let path = root().join("graphs/controlnet_canny.ron");
    let mut g = graph::parse_graph(&path.display().to_string(), &std::fs::read(&path).unwrap()).unwrap();
    let sets = [
        format!("ckpt.ckpt_name={:?}", ckpt.display().to_string()),
        format!("cnet.control_net_name={:?}", ckpt.display().to_string()),
    ];
    let sets: Vec<SetOverride> = sets.iter().map(|s| SetOverride::parse(s).unwrap()).collect();
    g.apply_overrides(&sets).unwrap();
    let reg = nodes::builtin_registry();
    let g = graph::validate(g, &reg).unwrap();
    let opts = RunOptions {
        base_dir: root().join("graphs"),
        out_dir: dir.to_path_buf(),
        graph_text: String::new(),
        progress: &NoProgress,
        cancel: Arc::new(AtomicBool::new(false)),
    };
    let report = Executor::default().run(&g, &opts);
    assert!(!report.ok);
    let errors = format!("{:?}", report.errors());
    assert!(
        errors.contains("cnet") && errors.contains("control_net_name") && errors.contains("not an SD ControlNet"),
        "{errors}"
    );
}

/// A ControlNet whose weights hold NaN stops the sampler at the first step and the error names that ControlNet
/// (not the checkpoint), the step and sigma; no picture is saved from it.
#[test]
fn a_controlnet_with_nan_weights_is_named_as_the_cause_and_nothing_is_saved() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    use models::checkpoint::safetensors::{Dtype, SafeTensors, write_with_metadata};
    let dir = crate::common::temp_dir("controlnet-nan");
    let ckpt = full_vocab_checkpoint(&dir);
    let st = SafeTensors::open(&controlnet_fixture("control_ldm.safetensors")).unwrap();
    let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for name in st.names() {
        let (shape, mut data) = st.f32_any(name).unwrap();
        if name == "control_model.middle_block_out.0.weight" {
            data[3] = f32::NAN;
        }
        owned.push((name.to_string(), shape, data));
    }
    let tensors: Vec<(&str, &[usize], &[f32])> =
        owned.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())).collect();
    let bad = dir.join("nan_controlnet.safetensors");
    write_with_metadata(&bad, &tensors, Dtype::F32, &[("sdgraph.norm_groups", "4"), ("sdgraph.unet.heads", "2")])
        .unwrap();

    let out = dir.join("out");
    let report = run_report(&ckpt, &bad, &[], None, &out);
    assert!(!report.ok);
    let errors = report.errors().join("\n");
    eprintln!("{errors}");
    for want in ["KSampler", "step 1/3", "sigma", "the ControlNet", "nan_controlnet.safetensors", "middle block", "NaN"]
    {
        assert!(errors.contains(want), "{want:?} missing from: {errors}");
    }
    assert!(!out.join("controlnet_canny_00001.png").exists(), "a picture was saved from the NaN run");
}

/// Runs an example graph as shipped, or with `sets`, in `exec` (so models load once and
/// only what `sets` changes runs again); returns the picture the `save` node wrote.
fn run_shipped(exec: &mut Executor, name: &str, sets: &[&str], out: &Path) -> image::RgbImage {
    let path = root().join("graphs").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let mut g = graph::parse_graph(&path.display().to_string(), text.as_bytes()).unwrap();
    let sets: Vec<SetOverride> = sets.iter().map(|s| SetOverride::parse(s).unwrap()).collect();
    g.apply_overrides(&sets).unwrap();
    let g = graph::validate(g, &nodes::builtin_registry()).unwrap_or_else(|e| panic!("{e}"));
    let report = exec.run(&g, &example_options(out, text));
    assert!(report.ok, "{name}: {:?}", report.errors());
    let prefix = name.trim_end_matches(".ron");
    let png = report
        .outputs()
        .into_iter()
        .rfind(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .unwrap_or_else(|| panic!("{name} saved no {prefix}_*.png: {:?}", report.outputs()));
    let img = image::open(png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (64, 64), "{png:?}");
    img
}

/// Where a picture's shape lies: the pixels whose palette colour is not the
/// background's (the rule of [`measure`]), as a mask.
fn shape_mask(img: &image::RgbImage, background: &str) -> Vec<bool> {
    let bg = COLOURS.iter().position(|c| c.0 == background).unwrap();
    img.pixels().map(|p| nearest_colour(p.0) != bg).collect()
}

/// The share of `picture`'s shape pixels that lie inside the bounding box of
/// the control picture's shape (or strokes), grown by 4 pixels (the demo shapes
/// are soft-edged).
fn share_inside(picture: &image::RgbImage, background: &str, control: &[bool]) -> f64 {
    let (mut x0, mut y0, mut x1, mut y1) = (i64::MAX, i64::MAX, i64::MIN, i64::MIN);
    for (i, _) in control.iter().enumerate().filter(|(_, m)| **m) {
        let (x, y) = ((i % 64) as i64, (i / 64) as i64);
        (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
    }
    let mask = shape_mask(picture, background);
    let n = mask.iter().filter(|&&m| m).count();
    let inside = (0..64 * 64i64)
        .filter(|&i| mask[i as usize])
        .filter(|&i| (x0 - 4..=x1 + 4).contains(&(i % 64)) && (y0 - 4..=y1 + 4).contains(&(i / 64)))
        .count();
    inside as f64 / n.max(1) as f64
}

/// One shipped ControlNet graph: as shipped, the shape is where the control
/// picture has it (not where the prompt says) in the prompt's colours; with the
/// given strengths at 0 it is where the prompt says.
fn check_shipped_controlnet_graph(name: &str, control: &str, prompt: Seen, no_control: &[&str]) {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir(name);
    let control = image::open(root().join("assets/demo").join(control)).unwrap().to_rgb8();
    let want = measure(&control);
    let control_mask = shape_mask(&control, want.background);
    assert_ne!(want.place, prompt.place, "the prompt must name another place than the control picture's");

    let mut exec = Executor::default();
    let t = std::time::Instant::now();
    let steered = run_shipped(&mut exec, name, &[], &dir);
    let seen = measure(&steered);
    let inside = share_inside(&steered, seen.background, &control_mask);
    eprintln!(
        "{name} as shipped ({:.1} s): {seen:?}, {:.0}% of the shape inside the control's",
        t.elapsed().as_secs_f64(),
        100.0 * inside
    );
    let t = std::time::Instant::now();
    let free = run_shipped(&mut exec, name, no_control, &dir);
    let seen_free = measure(&free);
    let inside_free = share_inside(&free, seen_free.background, &control_mask);
    eprintln!(
        "{name} without control ({:.1} s): {seen_free:?}, {:.0}% inside",
        t.elapsed().as_secs_f64(),
        100.0 * inside_free
    );

    // Steered: the control's place, the prompt's colours.
    assert_eq!(seen, Seen { place: want.place, ..prompt }, "{name} as shipped");
    assert!(inside >= 0.7, "{name}: only {:.0}% of the shape lies where the control picture has it", 100.0 * inside);
    // Free: the prompt's place and colours, away from the control's shape.
    assert_eq!(seen_free, prompt, "{name} without its ControlNets");
    assert!(inside_free < 0.3, "{name} without control: {:.0}% of the shape inside the control's", 100.0 * inside_free);
}

#[test]
fn the_shipped_canny_graph_puts_the_shape_where_the_edges_are() {
    // canny_control.png: a yellow triangle on black, bottom right.
    let prompt = Seen { colour: Some("red"), background: "blue", place: Some("top left") };
    check_shipped_controlnet_graph("controlnet_canny.ron", "canny_control.png", prompt, &["apply.strength=0.0"]);
}

#[test]
fn the_shipped_scribble_graph_puts_the_shape_where_the_strokes_are() {
    // scribble_control.png: a square's outline, black on white, top right.
    let prompt = Seen { colour: Some("yellow"), background: "green", place: Some("bottom left") };
    let no_control = ["scribble.strength=0.0", "canny.strength=0.0"];
    check_shipped_controlnet_graph("controlnet_scribble.ron", "scribble_control.png", prompt, &no_control);
}
