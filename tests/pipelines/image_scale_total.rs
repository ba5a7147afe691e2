//! ImageScaleToTotalPixels: sizes as ComfyUI computes them and pixels against f64
//! references of PyTorch's bilinear and area resampling, computed here.

use std::path::Path;
use std::sync::Arc;

use graph::{Image, NodeInputs, ParamValue, Value};

/// Runs ImageScaleToTotalPixels on `img`.
fn scale(img: &Image, method: &str, megapixels: f64, steps: i64) -> Result<Image, String> {
    let reg = nodes::builtin_registry();
    let progress = graph::exec::NoProgress;
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let out = std::env::temp_dir();
    let mut ctx = graph::RunContext::new("t", Path::new("."), &out, "", &progress, &cancel);
    let mut inp = NodeInputs::default();
    inp.inputs.insert("image".into(), Value::Image(Arc::new(img.clone())));
    inp.params.insert("upscale_method".into(), ParamValue::String(method.into()));
    inp.params.insert("megapixels".into(), ParamValue::Float(megapixels));
    inp.params.insert("resolution_steps".into(), ParamValue::Int(steps.into()));
    let v = reg.get("ImageScaleToTotalPixels").unwrap().run(&mut ctx, &inp).map_err(|e| e.message)?;
    Ok((*v[0].downcast_image()).clone())
}

trait ImageValue {
    fn downcast_image(&self) -> Arc<Image>;
}

impl ImageValue for Value {
    fn downcast_image(&self) -> Arc<Image> {
        match self {
            Value::Image(i) => i.clone(),
            v => panic!("not an image: {v:?}"),
        }
    }
}

/// The source indices and weights of one output index.
type Taps = Vec<(usize, f64)>;

/// PyTorch `interpolate(mode="bilinear", align_corners=False)` of one axis: for each output
/// index, the two source indices and their weights.
fn bilinear_taps(n_in: usize, n_out: usize) -> Vec<[(usize, f64); 2]> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(n_in - 1);
            let i1 = (i0 + 1).min(n_in - 1);
            let l = src - i0 as f64;
            [(i0, 1.0 - l), (i1, l)]
        })
        .collect()
}

/// PyTorch `interpolate(mode="area")` (adaptive average pooling) of one axis.
fn area_taps(n_in: usize, n_out: usize) -> Vec<Taps> {
    (0..n_out)
        .map(|o| {
            let start = (o * n_in) / n_out;
            let end = ((o + 1) * n_in).div_ceil(n_out);
            (start..end).map(|i| (i, 1.0 / (end - start) as f64)).collect()
        })
        .collect()
}

/// Separable resampling of `img` in f64 with per-axis taps.
fn reference(img: &Image, xs: &[Taps], ys: &[Taps]) -> Vec<f64> {
    let c = img.channels;
    let mut out = Vec::with_capacity(img.batch * ys.len() * xs.len() * c);
    for b in 0..img.batch {
        for ty in ys {
            for tx in xs {
                for ch in 0..c {
                    let mut v = 0.0;
                    for &(y, wy) in ty {
                        for &(x, wx) in tx {
                            v += wy * wx * img.get(b, y, x, ch) as f64;
                        }
                    }
                    out.push(v);
                }
            }
        }
    }
    out
}

fn random_image(w: usize, h: usize) -> Image {
    Image::from_data(2, h, w, 3, gpu::testing::random(2 * h * w * 3, 77, 0.0, 1.0)).unwrap()
}

/// Sizes from ComfyUI's formula (worked in Python: `round(w * sqrt(mp * 1024 * 1024 / (w * h))
/// / steps) * steps`), pixels within 1e-5 of the f64 references.
#[test]
fn sizes_and_pixels_match_comfyui_and_the_f64_references() {
    let img = random_image(37, 23);
    let cases = [
        // (method, megapixels, resolution_steps, expected width x height)
        ("bilinear", 0.002, 1, (58, 36)),
        ("bilinear", 0.002, 8, (56, 40)),
        ("bilinear", 0.0005, 1, (29, 18)),
        ("area", 0.0005, 1, (29, 18)),
        ("area", 0.0002, 4, (20, 12)),
    ];
    for (method, mp, steps, (w, h)) in cases {
        let out = scale(&img, method, mp, steps).unwrap();
        assert_eq!((out.batch, out.width, out.height, out.channels), (2, w, h, 3), "{method} {mp} {steps}");
        let (xs, ys): (Vec<Taps>, Vec<Taps>) = if method == "area" {
            (area_taps(37, w), area_taps(23, h))
        } else {
            (
                bilinear_taps(37, w).into_iter().map(Vec::from).collect(),
                bilinear_taps(23, h).into_iter().map(Vec::from).collect(),
            )
        };
        let want = reference(&img, &xs, &ys);
        let err = out.data.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
        println!("{method} {mp} MP steps {steps}: {w}x{h}, max abs err {err:.2e}");
        assert!(err <= 1e-5, "{method} {mp} {steps}: max abs err {err}");
    }
}

/// ComfyUI's real-size examples, and a side that rounds to 0 is an error naming the params.
#[test]
fn real_sizes_and_a_zero_side() {
    for (w, h, mp, steps, want) in
        [(640, 480, 1.0, 1, (1182, 887)), (640, 480, 1.0, 64, (1152, 896)), (512, 512, 1.0, 1, (1024, 1024))]
    {
        assert_eq!(nodes::image_nodes::total_pixels_size(w, h, mp, steps), want, "{w}x{h} {mp} {steps}");
    }
    let e = scale(&Image::zeros(1, 10, 1000, 3), "nearest-exact", 0.01, 256).unwrap_err();
    assert!(e.contains("1024x0") && e.contains("resolution_steps"), "{e}");
}
