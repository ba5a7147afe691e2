//! sdgraph's saved PNGs against 8-bit pictures made with ComfyUI's maths: the fixture
//! tests/fixtures/comfy_pixels/ (made by make_comfy_pixels_fixture.py, which imports the sampling_unet fixture's
//! model path) runs the tiny SD model through ComfyUI's KSampler maths in float64 (torch's CPU noise, ComfyUI's
//! float32 sigmas and float32 timestep argmin, k-diffusion's samplers, CFG), `process_latent_out` (latent / 0.18215),
//! VAEDecode (`clamp((x + 1) / 2, 0, 1)`) and SaveImage's `np.clip(255. * i, 0, 255).astype(np.uint8)`. Here each
//! case runs as a graph (CheckpointLoaderSimple on sd_tiny/model.safetensors -> KSampler with the case's seed,
//! sampler, scheduler, steps, cfg and denoise, fed by test nodes with the fixture's prompts and start latent ->
//! VAEDecode -> SaveImage into a temporary folder), and the PNG's bytes are compared with the fixture's.
//!
//! Cases: euler, heun, dpmpp_2m (txt2img) and dpmpp_2m img2img (denoise 0.4); two timestep ties (normal 19 steps
//! and sgm_uniform 18 steps, whose sigmas at t = 943.5 and 721.5 lie exactly between two log sigmas in float32:
//! ComfyUI feeds the UNet 943 and 721, a float64 comparison 944 and 722, and the fixture measured that taking the
//! float64 side moves 741 and 865 of the 3072 saved values by up to 2 levels); a seed above 2^63 (2^63 + 12345) with
//! euler_ancestral (its noise from seed + 1) and heun. Area conditioning (group `area`, the generator ports
//! ComfyUI's area path): the fixture's positive text combined with a third text through ConditioningSetArea (the
//! negative gets its same-area partner), cropped, weighted, feathered and averaged per side: euler (area inside the
//! latent, strength 1.5, cfg 6), dpmpp_2m karras (area past the bottom-right corner, clamped, strength 0.7) and heun
//! with the whole-picture positive limited by ConditioningSetTimestepRange to a start sigma that equals a schedule
//! sigma exactly (ComfyUI keeps the entry there; the fixture measured that dropping it moves 2527 values by up to 91
//! levels). Mask conditioning (group `mask`, the generator adds ComfyUI's mask path): the third text through
//! ConditioningSetMask (its MASK from the fixture by a test node), combined with the whole-picture positive: euler
//! with a soft 32x32 disc, bilinear to the 16x16 latent, at 1.3 ("default": no area, no partner); dpmpp_2m karras
//! with "mask bounds" over two 24x40 masks (a box 3 rows high widened to 8 and clamped at the bottom, weights from
//! the first mask, the negative's partner keeping the mask); heun with "mask bounds" undone by ConditioningSetArea
//! (the mask cut to the area, not feathered). No test runs Python.
//!
//! Tolerance. sdgraph computes in f32 (forced here: on GPUs with fast f16 the loader would pick f16, which cannot
//! give ComfyUI's f32 bytes), the reference in float64, so sdgraph's 255 * x lands a little off the reference's.
//! Where the reference's 255 * x lies near a level boundary (an integer 1..255: SaveImage truncates), that
//! small error can move the saved value one level either way; further away it cannot. So every value whose
//! reference lies more than `MARGIN` from a boundary must be saved exactly as the fixture says, and the values
//! within `MARGIN` may differ by one level. The test also captures VAEDecode's output, checks its 255 * x is within
//! `MARGIN` of the reference (so the argument above holds), and prints the measured deviation and the counts
//! (`cargo test --test models comfy_pixels -- --nocapture`).

use std::sync::OnceLock;

use gpu::DType;
use gpu::testing::shared_gpu;
use graph::exec::Executor;
use models::checkpoint::safetensors::Dtype;
use serde_json::Value;

use crate::ksampler_fixture::{Fixture, ksampler_graph, ksampler_graph_with, registry};

/// In units of 255 * x. Measured on lavapipe: sdgraph's 255 * x (VAEDecode's output) is at most 5.5e-4 from the
/// float64 reference (1.5e-4 to 5.5e-4 per case, the most for euler at cfg 6, whose latent is off by 1.4e-4 on
/// values up to 67; the area cases 2.1e-4 to 4.7e-4, the mask cases 2.2e-4 to 5.5e-4); PyTorch itself, running the
/// same cases on the CPU in float32, is up to 8.3e-4 away (meta.json `calibration`). Every saved value then equals
/// the fixture's, including the 18 to 35 per case (of 3072) that lie within 0.005 of a boundary. 0.005 is about 10
/// times the measured error, room for other adapters' rounding, and still lets only those 0.6-1% of the values move
/// by one level.
const MARGIN: f64 = 0.005;

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| Fixture::open("comfy_pixels"))
}

/// A saved picture's shape and 8-bit values.
fn pixels(name: &str) -> (Vec<usize>, Vec<u8>) {
    let (info, bytes) = fixture().tensors.bytes(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(info.dtype, Dtype::U8, "{name}");
    (info.shape.clone(), bytes.to_vec())
}

/// The cases of one group (plain, tie, big_seed).
fn cases(group: &str) -> Vec<&'static Value> {
    fixture().meta["cases"].as_array().unwrap().iter().filter(|c| c["group"] == group).collect()
}

/// How far the reference's 255 * x (before the clamp) lies from the nearest value where the saved level changes:
/// the integers 1..=255 (below 1 everything saves as 0, from 255 up as 255).
fn boundary_distance(v: f64) -> f64 {
    (v - v.round().clamp(1.0, 255.0)).abs()
}

/// The graph of one case: the seed and every KSampler setting are graph params, the PNG is `<name>_00001.png`,
/// Capture keeps the latent and VAEDecode's picture.
fn graph_text(case: &Value) -> String {
    let rest = format!(
        r#""decode": (kind: "VAEDecode", inputs: {{ "samples": "sample.latent", "vae": "ckpt.vae" }}),
            "save": (kind: "SaveImage", inputs: {{ "images": "decode.image" }},
                params: {{ "filename_prefix": {name:?} }}),
            "keep": (kind: "Capture", inputs: {{ "samples": "sample.latent", "image": "decode.image" }}),"#,
        name = case["name"].as_str().unwrap(),
    );
    let seed = case["seed"].as_u64().unwrap();
    match case.get("conditioning") {
        None => ksampler_graph(case, seed, &rest),
        Some(conds) => {
            let (pos_nodes, pos) = conditioning_nodes("positive", &conds["positive"]);
            let (neg_nodes, neg) = conditioning_nodes("negative", &conds["negative"]);
            ksampler_graph_with(case, seed, [&pos, &neg], &format!("{pos_nodes}{neg_nodes}{rest}"))
        }
    }
}

/// An area or mask case's conditioning for one side (`meta.json`'s `conditioning.<side>`): per entry its text
/// (FixtureConditioning), then ConditioningSetTimestepRange, ConditioningSetMask (its mask from FixtureMask) and
/// ConditioningSetArea where given, in that order, the entries joined in order by ConditioningCombine
/// (`conditioning_1` the ones before). Returns the nodes and the output's name.
fn conditioning_nodes(side: &str, entries: &Value) -> (String, String) {
    let mut nodes = String::new();
    let mut joined: Option<String> = None;
    for (i, e) in entries.as_array().unwrap().iter().enumerate() {
        let id = format!("{side}_{i}");
        nodes += &format!(
            r#""{id}": (kind: "FixtureConditioning", params: {{ "which": {:?} }}),"#,
            e["text"].as_str().unwrap()
        );
        let mut out = format!("{id}.conditioning");
        if let Some(r) = e.get("timestep_range") {
            let (start, end) = (r[0].as_f64().unwrap(), r[1].as_f64().unwrap());
            nodes += &format!(
                r#""{id}_range": (kind: "ConditioningSetTimestepRange", inputs: {{ "conditioning": {out:?} }},
                    params: {{ "start": {start:?}, "end": {end:?} }}),"#
            );
            out = format!("{id}_range.conditioning");
        }
        if let Some(m) = e.get("set_mask") {
            nodes += &format!(
                r#""{id}_mask_in": (kind: "FixtureMask", params: {{ "name": {:?} }}),
                "{id}_mask": (kind: "ConditioningSetMask", inputs: {{ "conditioning": {out:?}, "mask": "{id}_mask_in.mask" }},
                    params: {{ "strength": {:?}, "set_cond_area": {:?} }}),"#,
                m["mask"].as_str().unwrap(),
                m["strength"].as_f64().unwrap(),
                m["set_cond_area"].as_str().unwrap()
            );
            out = format!("{id}_mask.conditioning");
        }
        if let Some(a) = e.get("set_area") {
            let px = |k: &str| a[k].as_u64().unwrap();
            nodes += &format!(
                r#""{id}_area": (kind: "ConditioningSetArea", inputs: {{ "conditioning": {out:?} }},
                    params: {{ "width": {}, "height": {}, "x": {}, "y": {}, "strength": {:?} }}),"#,
                px("width"),
                px("height"),
                px("x"),
                px("y"),
                a["strength"].as_f64().unwrap()
            );
            out = format!("{id}_area.conditioning");
        }
        joined = Some(match joined {
            None => out,
            Some(before) => {
                nodes += &format!(
                    r#""{id}_combine": (kind: "ConditioningCombine",
                        inputs: {{ "conditioning_1": {before:?}, "conditioning_2": {out:?} }}),"#
                );
                format!("{id}_combine.conditioning")
            }
        });
    }
    (nodes, joined.expect("at least one entry"))
}

/// One case's PNG against the fixture.
#[derive(Default)]
struct Comparison {
    /// Values further than `MARGIN` from a boundary, all of which must be equal.
    far: usize,
    far_differing: usize,
    /// Values within `MARGIN` of a boundary: equal, one level off, further off.
    near: usize,
    near_off_by_one: usize,
    near_further: usize,
    max_level_diff: u8,
    /// The first few offending values: (index, saved, fixture, reference 255 * x).
    examples: Vec<(usize, u8, u8, f32)>,
}

fn compare(got: &[u8], want: &[u8], value255: &[f32]) -> Comparison {
    assert_eq!(got.len(), want.len());
    assert_eq!(got.len(), value255.len());
    let mut c = Comparison::default();
    for (i, ((&g, &w), &v)) in got.iter().zip(want).zip(value255).enumerate() {
        let diff = g.abs_diff(w);
        c.max_level_diff = c.max_level_diff.max(diff);
        let near = boundary_distance(f64::from(v)) <= MARGIN;
        let bad = if near {
            c.near += 1;
            c.near_off_by_one += usize::from(diff == 1);
            c.near_further += usize::from(diff > 1);
            diff > 1
        } else {
            c.far += 1;
            c.far_differing += usize::from(diff != 0);
            diff != 0
        };
        if bad && c.examples.len() < 8 {
            c.examples.push((i, g, w, v));
        }
    }
    c
}

/// Runs the fixture's cases of `group` as graphs and checks their PNGs (see the header); panics listing every
/// failing case. Returns how many cases ran.
fn check_group(group: &str) -> usize {
    let Some(_gpu) = shared_gpu() else { return 0 };
    let fx = fixture();
    let cases = cases(group);
    assert!(!cases.is_empty(), "no {group} case in the fixture");
    let out = crate::common::temp_dir(&format!("comfy-pixels-{group}"));
    // The built-in kinds in f32 whatever the adapter (see the header), plus the test kinds.
    let (reg, slot) = registry(fx, nodes::Settings { dtype: Some(DType::F32), ..Default::default() });
    let mut exec = Executor::default();
    let mut failures = Vec::new();
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let g = crate::common::validate_str(&graph_text(case), &reg).unwrap_or_else(|e| panic!("{name}: {e}"));
        let report = crate::common::run(&mut exec, &g, &out);
        assert!(report.ok, "{name}: {:?}", report.errors());

        let png = image::open(out.join(format!("{name}_00001.png"))).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(png.color(), image::ColorType::Rgb8, "{name}: SaveImage writes 8-bit RGB");
        let (shape, want) = pixels(&format!("{name}.pixels"));
        assert_eq!([png.height() as usize, png.width() as usize, 3], shape[..], "{name}: picture size");
        let got = png.to_rgb8().into_raw();
        let (_, value255) = fx.tensor(&format!("{name}.value255"));
        let c = compare(&got, &want, &value255);

        // Diagnostics: how far the latent and VAEDecode's 255 * x are from the reference.
        let captured = std::mem::take(&mut *slot.lock().unwrap());
        let (latent, image) = (captured.latent.expect("the capture ran"), captured.image.expect("the capture ran"));
        let (_, want_latent) = fx.tensor(&format!("{name}.latent"));
        let latent_err = max_abs_diff(&latent.samples, &want_latent);
        let latent_max = want_latent.iter().fold(0f32, |m, v| m.max(v.abs()));
        let clamped: Vec<f32> = value255.iter().map(|v| v.clamp(0.0, 255.0)).collect();
        let scaled: Vec<f32> = image.data.iter().map(|&x| 255.0 * x).collect();
        let value_err = max_abs_diff(&scaled, &clamped);

        println!(
            "{name:32} 255*x off by {value_err:.2e}; latent off by {latent_err:.2e} (values up to {latent_max:.1}); \
             {} values further than {MARGIN} from a boundary, {} differing; {} within it: {} one level off, {} \
             further",
            c.far, c.far_differing, c.near, c.near_off_by_one, c.near_further
        );
        if c.far_differing > 0 || c.near_further > 0 {
            failures.push(format!(
                "{name}: {} of {} values away from a level boundary differ from ComfyUI's, {} near one differ by more \
                 than a level (max {} levels; latent off by {latent_err:.2e}); (index, saved, ComfyUI, 255 * x): {:?}",
                c.far_differing, c.far, c.near_further, c.max_level_diff, c.examples
            ));
        }
        if value_err > MARGIN {
            failures
                .push(format!("{name}: VAEDecode's 255 * x is {value_err:.2e} from the reference (margin {MARGIN})"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    cases.len()
}

fn max_abs_diff(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).map(|(&g, &w)| (f64::from(g) - f64::from(w)).abs()).fold(0.0, f64::max)
}

#[test]
fn pngs_equal_comfyui_pixels() {
    // euler, heun, dpmpp_2m txt2img, dpmpp_2m img2img.
    let ran = check_group("plain");
    assert!(ran == 0 || ran >= 4, "{ran} cases");
}

#[test]
fn pngs_equal_comfyui_pixels_at_timestep_ties() {
    // normal 19 steps and sgm_uniform 18 steps: ComfyUI's t = 943 and 721, not the float64-nearest 944 and 722.
    check_group("tie");
}

#[test]
fn pngs_equal_comfyui_pixels_with_a_seed_above_2_63() {
    // 2^63 + 12345 (ancestral noise from seed + 1), set through the graph's seed param.
    let cases = cases("big_seed");
    assert!(cases.iter().all(|c| c["seed"].as_u64().is_some_and(|s| s > i64::MAX as u64)), "seeds above 2^63");
    check_group("big_seed");
}

#[test]
fn pngs_equal_comfyui_pixels_with_area_conditioning() {
    // ConditioningSetArea (inside the latent at strength 1.5; past its bottom-right corner, clamped, at 0.7) and
    // ConditioningSetTimestepRange, combined with a whole-picture positive; the negative gets the area's partner.
    let ran = check_group("area");
    assert!(ran == 0 || ran >= 3, "{ran} cases");
}

#[test]
fn pngs_equal_comfyui_pixels_with_mask_conditioning() {
    // ConditioningSetMask: a soft 32x32 disc (bilinear to the latent) at 1.3, "default"; "mask bounds" from two
    // 24x40 masks (a box 3 rows high widened to 8, clamped at the bottom; weights from the first mask; the negative's
    // partner keeps the mask); "mask bounds" undone by ConditioningSetArea (the mask cut to the area, not feathered).
    let ran = check_group("mask");
    assert!(ran == 0 || ran >= 3, "{ran} cases");
}

#[test]
fn fixture_is_what_the_test_assumes() {
    // No GPU needed: the tie cases really tie and the tie matters; the saved values are SaveImage's truncation of
    // the reference's 255 * x; most values are not clamped.
    let fx = fixture();
    for case in fx.meta["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (_, want) = pixels(&format!("{name}.pixels"));
        let (_, value255) = fx.tensor(&format!("{name}.value255"));
        for (i, (&p, &v)) in want.iter().zip(&value255).enumerate() {
            if boundary_distance(f64::from(v)) > 1e-4 {
                assert_eq!(p, v.clamp(0.0, 255.0) as u8, "{name}[{i}]: 255 * x = {v}");
            }
        }
        let interior = case["pixels"]["interior"].as_u64().unwrap() as usize;
        assert!(interior * 3 > want.len() * 2, "{name}: only {interior} of {} values unclamped", want.len());
        let near = value255.iter().filter(|&&v| boundary_distance(f64::from(v)) <= MARGIN).count();
        assert!(near * 50 < want.len(), "{name}: {near} values within {MARGIN} of a boundary");
        if case["group"] == "area" {
            // The negative ends with the area's partner: the positive area's area and strength, the negative's text.
            let after = &case["after_process_conds"];
            let area = after["positive"].as_array().unwrap().iter().find(|e| e.get("area_hwyx").is_some()).unwrap();
            let negative = after["negative"].as_array().unwrap();
            let partner = negative.last().unwrap();
            assert_eq!(negative.len(), 2, "{name}");
            assert_eq!(
                (&partner["text"], &partner["area_hwyx"], &partner["strength"]),
                (&negative[0]["text"], &area["area_hwyx"], &area["strength"]),
                "{name}"
            );
            assert_ne!(area["text"], partner["text"], "{name}: the partner's text must differ from the area's");
            // Every part of the area path moves many more values than the margin lets move.
            let sensitivity = case["sensitivity"].as_object().unwrap();
            assert!(sensitivity.len() >= 4, "{name}");
            for (what, s) in sensitivity.iter().filter(|(k, _)| *k != "doc") {
                let moved = s["values_differing"].as_u64().unwrap() as usize;
                assert!(moved > near * 10, "{name}: {what} moves only {moved} values");
            }
        }
        if case["group"] == "mask" {
            // Each masked entry's mask is given at another size than the latent's (the bilinear resize matters);
            // an entry with an area has its partner on the negative side, with the mask; one without has none.
            let after = &case["after_process_conds"];
            let masked: Vec<&Value> =
                after["positive"].as_array().unwrap().iter().filter(|e| e.get("mask_shape").is_some()).collect();
            assert_eq!(masked.len(), 1, "{name}");
            let m = masked[0];
            let given = case["conditioning"]["positive"].as_array().unwrap().iter().find_map(|e| e.get("set_mask"));
            let (shape, _) = fx.tensor(given.unwrap()["mask"].as_str().unwrap());
            assert_ne!(shape[1..], fx.shape()[2..], "{name}: the mask at the latent's size");
            assert_eq!(m["mask_shape"].as_array().unwrap()[1..], [16, 16], "{name}");
            let negative = after["negative"].as_array().unwrap();
            match m.get("area_hwyx") {
                None => assert_eq!(negative.len(), 1, "{name}: a partner without an area"),
                Some(area) => {
                    let partner = negative.last().unwrap();
                    assert_eq!(negative.len(), 2, "{name}");
                    assert_eq!(partner["text"], negative[0]["text"], "{name}");
                    for k in ["area_hwyx", "strength", "mask_shape", "mask_strength"] {
                        assert_eq!(partner[k], m[k], "{name}: the partner's {k}");
                    }
                    if m["set_area_to_bounds"] == true {
                        // The box is fewer than 8 rows high: widened to 8, past the bottom (clamped when run).
                        let a: Vec<u64> = area.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
                        assert!(a[0] == 8 && a[2] + a[0] > 16, "{name}: area {a:?}");
                    }
                }
            }
            // Every perturbation of the mask path moves several times the values the margin lets move.
            let sensitivity = case["sensitivity"].as_object().unwrap();
            assert!(sensitivity.len() >= 3, "{name}");
            for (what, s) in sensitivity.iter().filter(|(k, _)| *k != "doc") {
                let moved = s["values_differing"].as_u64().unwrap() as usize;
                assert!(moved > near * 5, "{name}: {what} moves only {moved} values");
            }
        }
        if case["group"] == "tie" {
            let ties = case["ties"].as_array().unwrap();
            let ts: Vec<u64> = ties.iter().map(|t| t["comfyui_t"].as_u64().unwrap()).collect();
            assert_eq!(ts, [943, 721], "{name}");
            assert!(ties.iter().all(|t| t["nearest_f64_t"].as_u64().unwrap() == t["comfyui_t"].as_u64().unwrap() + 1));
            let moved = case["sensitivity"]["values_differing"].as_u64().unwrap() as usize;
            assert!(moved > near * 10, "{name}: the f64 tie resolution moves only {moved} values");
        }
    }
}
