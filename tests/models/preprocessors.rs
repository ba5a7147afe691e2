//! The ControlNet preprocessors: Canny against the float64 Python reference in
//! tests/fixtures/controlnet/canny.safetensors (make_controlnet_fixture.py's
//! `canny_f64`, written from ComfyUI's Canny node) and on the full sample
//! picture; BinaryPreprocessor against plain references (OpenCV's gray
//! formula, a brute-force Otsu) and on the sample picture; errors.

use std::path::Path;
use std::sync::Arc;

use graph::exec::NoProgress;
use graph::{Image, NodeInputs, ParamValue, RunContext, Value};
use models::checkpoint::safetensors::SafeTensors;
use models::image_ops::edges::{canny, gray_u8, otsu_threshold};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn sample_picture() -> Image {
    let rgb = image::open(root().join("assets/sample.png")).unwrap().to_rgb8();
    let (w, h) = rgb.dimensions();
    let data = rgb.as_raw().iter().map(|&v| f32::from(v) / 255.0).collect();
    Image { batch: 1, height: h as usize, width: w as usize, channels: 3, data }
}

/// Runs a node kind with `image` and params (defaults for the rest).
fn run_node(kind: &str, image: Image, params: &[(&str, ParamValue)]) -> Result<Arc<Image>, String> {
    let reg = nodes::builtin_registry();
    let node = reg.get(kind).unwrap();
    let mut inp = NodeInputs::default();
    for p in &node.schema().params {
        if let Some(d) = &p.default {
            inp.params.insert(p.name.clone(), d.clone());
        }
    }
    for (k, v) in params {
        inp.params.insert(k.to_string(), v.clone());
    }
    inp.inputs.insert("image".into(), Value::Image(Arc::new(image)));
    let progress = NoProgress;
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let out_dir = std::env::temp_dir();
    let mut ctx = RunContext::new(kind, Path::new("."), &out_dir, "", &progress, &cancel);
    match node.run(&mut ctx, &inp).map_err(|e| e.message)?.remove(0) {
        Value::Image(i) => Ok(i),
        v => panic!("not an image: {v:?}"),
    }
}

#[test]
fn canny_matches_the_float64_reference_on_a_photo_crop_and_a_synthetic_picture() {
    let st = SafeTensors::open(&root().join("tests/fixtures/controlnet/canny.safetensors")).unwrap();
    for (case, picture) in [("sample", "sample"), ("sample_low", "sample"), ("synth", "synth")] {
        let (shape, rgb) = st.f32_any(&format!("{picture}.image")).unwrap();
        let (h, w) = (shape[0], shape[1]);
        let th = st.f32_any(&format!("{case}.thresholds")).unwrap().1;
        let want_mag = st.f32_any(&format!("{case}.magnitude")).unwrap().1;
        let want_edges = st.f32_any(&format!("{case}.edges")).unwrap().1;
        let out = canny(&rgb, h, w, 3, f64::from(th[0]), f64::from(th[1])).unwrap();
        // The reference ran on these f32 pixels in float64, in the same operation order.
        let mag_err = out.magnitude.iter().zip(&want_mag).map(|(a, b)| (*a as f32 - b).abs()).fold(0.0f32, f32::max);
        let differing = out.edges.iter().zip(&want_edges).filter(|(a, b)| a != b).count();
        let n_edges = want_edges.iter().filter(|&&v| v == 1.0).count();
        eprintln!(
            "{case}: {h}x{w}, magnitude max err {mag_err:.2e}, {differing} differing edge pixels of {n_edges} edges"
        );
        assert!(mag_err < 1e-5, "{case}: magnitude off by {mag_err}");
        assert_eq!(differing, 0, "{case}: edge maps differ");
        assert!(n_edges > 10 && n_edges < h * w / 3, "{case}: {n_edges} edges is not a plausible edge map");
    }
}

#[test]
fn canny_node_on_the_sample_picture_gives_thin_binary_edges_that_shrink_with_higher_thresholds() {
    let pic = sample_picture();
    let (h, w) = (pic.height, pic.width);
    let edges = |low: f64, high: f64| {
        let out = run_node(
            "Canny",
            pic.clone(),
            &[("low_threshold", ParamValue::Float(low)), ("high_threshold", ParamValue::Float(high))],
        )
        .unwrap();
        assert_eq!((out.batch, out.height, out.width, out.channels), (1, h, w, 3));
        let map: Vec<f32> = out.data.chunks(3).map(|p| p[0]).collect();
        for (p, px) in out.data.chunks(3).enumerate() {
            assert!(px[0] == px[1] && px[1] == px[2], "pixel {p} differs across channels");
            assert!(px[0] == 0.0 || px[0] == 1.0, "pixel {p} is {}", px[0]);
        }
        map
    };
    let default = edges(0.4, 0.8);
    let loose = edges(0.1, 0.3);
    let strict = edges(0.7, 0.95);
    let count = |m: &[f32]| m.iter().filter(|&&v| v == 1.0).count();
    eprintln!("edges: loose {}, default {}, strict {} of {}", count(&loose), count(&default), count(&strict), h * w);
    assert!(count(&default) > (h * w) / 200 && count(&default) < (h * w) / 4);
    // Raising both thresholds can only remove edges.
    for (a, b) in [(&loose, &default), (&default, &strict)] {
        assert!(a.iter().zip(b.iter()).all(|(x, y)| y <= x), "an edge appeared at a higher threshold");
    }
    assert!(count(&strict) <= count(&default) && count(&default) < count(&loose));
    // The same picture at a quarter of its contrast has weaker gradients, so fewer edges pass.
    let mut faint = pic.clone();
    faint.data.iter_mut().for_each(|v| *v *= 0.25);
    let faint = run_node("Canny", faint, &[]).unwrap();
    let n_faint = faint.data.chunks(3).filter(|p| p[0] == 1.0).count();
    eprintln!("quarter contrast: {n_faint} edges");
    assert!(n_faint < count(&default) / 2);
    // Thin: after non-maximum suppression no 2x2 block is all edge (on this picture).
    let full_blocks = (0..h - 1)
        .flat_map(|y| (0..w - 1).map(move |x| (y, x)))
        .filter(|&(y, x)| [(0, 0), (0, 1), (1, 0), (1, 1)].iter().all(|(dy, dx)| default[(y + dy) * w + x + dx] == 1.0))
        .count();
    assert!(full_blocks < count(&default) / 20, "{full_blocks} solid 2x2 blocks: edges are not thin");
}

#[test]
fn canny_rejects_pictures_too_small_for_its_padding() {
    let e = run_node("Canny", Image::zeros(1, 2, 5, 3), &[]).unwrap_err();
    assert!(e.contains("image") && e.contains("at least 3x3"), "{e}");
    // A flat picture has no edges.
    let out = run_node("Canny", Image::zeros(2, 8, 9, 3), &[]).unwrap();
    assert!(out.data.iter().all(|&v| v == 0.0));
    assert_eq!(out.batch, 2);
}

#[test]
fn binary_gray_levels_are_opencv_fixed_point_and_otsu_maximises_between_class_variance() {
    // cv2.cvtColor(RGB2GRAY) of pure red, green, blue, white, a mid gray, and one rounding case.
    let px = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [0.2, 0.6, 0.9]];
    let flat: Vec<f32> = px.iter().flatten().copied().collect();
    // (255*4899 + 8192) >> 14 = 76, ... ; 0.5 -> 128 (round of 127.5); (51, 153, 230) -> 2159082 >> 14 = 131.
    assert_eq!(gray_u8(&flat, 3), [76, 150, 29, 255, 128, 131]);

    // Brute force over every threshold, f64, on the sample picture.
    let pic = sample_picture();
    let gray = gray_u8(&pic.data, 3);
    let variance = |t: usize| {
        let (lo, hi): (Vec<f64>, Vec<f64>) = (
            gray.iter().filter(|&&g| g as usize <= t).map(|&g| f64::from(g)).collect(),
            gray.iter().filter(|&&g| g as usize > t).map(|&g| f64::from(g)).collect(),
        );
        if lo.is_empty() || hi.is_empty() {
            return -1.0;
        }
        let (m0, m1) = (lo.iter().sum::<f64>() / lo.len() as f64, hi.iter().sum::<f64>() / hi.len() as f64);
        lo.len() as f64 * hi.len() as f64 * (m0 - m1).powi(2)
    };
    let best = (0..256)
        .map(|t| (t, variance(t)))
        .fold((0, -1.0), |b, (t, v)| if v > b.1 * (1.0 + 1e-12) { (t, v) } else { b });
    let t = otsu_threshold(&gray);
    assert!((variance(t as usize) - best.1).abs() <= 1e-9 * best.1, "otsu {t} vs brute force {}", best.0);
    // Two clusters: the first threshold that separates them.
    let two: Vec<u8> = [20u8; 50].iter().chain([200u8; 70].iter()).copied().collect();
    assert_eq!(otsu_threshold(&two), 20);
}

#[test]
fn binary_preprocessor_marks_dark_pixels_white_with_a_fixed_or_otsu_threshold() {
    let pic = sample_picture();
    let gray = gray_u8(&pic.data, 3);
    for (param, thresh) in [(100i64, 100u8), (0, otsu_threshold(&gray)), (255, otsu_threshold(&gray)), (180, 180)] {
        let out =
            run_node("BinaryPreprocessor", pic.clone(), &[("bin_threshold", ParamValue::Int(param.into()))]).unwrap();
        assert_eq!((out.height, out.width, out.channels), (pic.height, pic.width, 3));
        for (p, (px, &g)) in out.data.chunks(3).zip(&gray).enumerate() {
            let want = if g > thresh { 0.0 } else { 1.0 };
            assert!(px == [want, want, want], "bin_threshold {param}: pixel {p} (gray {g}) is {px:?}");
        }
        let white = out.data.chunks(3).filter(|p| p[0] == 1.0).count();
        eprintln!("bin_threshold {param} (threshold {thresh}): {white} stroke pixels of {}", gray.len());
    }
    // Otsu splits the sample picture into two real classes.
    let t = otsu_threshold(&gray);
    let dark = gray.iter().filter(|&&g| g <= t).count();
    assert!(dark > gray.len() / 20 && dark < gray.len() * 19 / 20, "otsu {t}: {dark} dark pixels");
}
