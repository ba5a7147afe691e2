//! The upscale networks (`models::{esrgan, srvgg}`) against the tiny
//! fixtures (tests/fixtures/upscale, computed by PyTorch in float64 with
//! basicsr's definitions, which the generator checks against spandrel):
//! RRDBNet x4, RRDBNet x2 (pixel unshuffle) and SRVGGNetCompact x4 within
//! 1e-4 in f32, loaded from `.safetensors`, from the `.pth` torch.save
//! wrote (bit-identical outputs), and from the original ESRGAN key layout;
//! a stated bound in f16; configs detected from the weights; unknown and
//! broken layouts refused by name.

use std::path::{Path, PathBuf};

use gpu::testing::shared_gpu;
use gpu::{DType, Gpu};
use models::checkpoint::safetensors::{Dtype, SafeTensors, write};
use models::upscaler::{UpscaleModel, UpscaleNet, open_weights};

/// The fixtures' tolerance (meta.json `tolerance.max_abs`).
const F32_TOL: f32 = 1e-4;
/// f16 weights and activations (f32 arithmetic): measured 8.4e-4 (RRDBNet x4), 6.9e-4
/// (x2) and 7.8e-4 (compact) on lavapipe, for outputs of magnitude up to ~2 (f16's
/// spacing there is 9.8e-4); about 3.5x headroom for other adapters' rounding.
const F16_TOL: f32 = 3e-3;

const CASES: [&str; 3] = ["rrdb_x4", "rrdb_x2", "srvgg_x4"];

fn dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/upscale").join(case)
}

fn load(gpu: &Gpu, path: &Path, dtype: DType) -> UpscaleModel {
    let src = open_weights(path).unwrap_or_else(|e| panic!("{e}"));
    UpscaleModel::load(gpu, &src, dtype).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn tensor(path: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    SafeTensors::open(path).unwrap().f32_any(name).unwrap()
}

fn run(gpu: &Gpu, model: &UpscaleModel, x: &[f32], shape: &[usize]) -> (Vec<usize>, Vec<f32>) {
    let t = gpu.upload(x, shape, model.dtype).unwrap();
    let y = model.forward(gpu, &t).unwrap();
    (y.shape().to_vec(), gpu.download(&y).unwrap())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn each_architecture_matches_pytorch_in_f32_and_pth_equals_safetensors() {
    let Some(gpu) = shared_gpu() else { return };
    for case in CASES {
        let d = dir(case);
        let (shape, x) = tensor(&d.join("inputs.safetensors"), "image");
        let (want_shape, want) = tensor(&d.join("expected.safetensors"), "output");
        let st = load(gpu, &d.join("model.safetensors"), DType::F32);
        let pth = load(gpu, &d.join("model.pth"), DType::F32);
        let (got_shape, got) = run(gpu, &st, &x, &shape);
        assert_eq!(got_shape, want_shape, "{case}");
        let err = max_abs_diff(&got, &want);
        eprintln!("{case}: max |sdgraph - pytorch| = {err:e} (f32)");
        assert!(err <= F32_TOL, "{case}: max abs diff {err} > {F32_TOL}");
        // Same weights through the other reader: the very same numbers.
        let (_, from_pth) = run(gpu, &pth, &x, &shape);
        assert!(got.iter().zip(&from_pth).all(|(a, b)| a.to_bits() == b.to_bits()), "{case}: .pth output differs");
    }
}

#[test]
fn configs_are_detected_from_the_weights() {
    let Some(gpu) = shared_gpu() else { return };
    let x4 = load(gpu, &dir("rrdb_x4").join("model.pth"), DType::F32);
    assert_eq!(x4.describe(), "RRDBNet x4 (2 blocks, 8 features, 4 growth, 3 -> 3 channels)");
    let x2 = load(gpu, &dir("rrdb_x2").join("model.safetensors"), DType::F32);
    assert_eq!(x2.describe(), "RRDBNet x2 (2 blocks, 8 features, 4 growth, 3 -> 3 channels, pixel-unshuffle 2)");
    assert_eq!((x2.scale(), x2.size_multiple()), (2, 2));
    let c = load(gpu, &dir("srvgg_x4").join("model.pth"), DType::F32);
    assert_eq!(c.describe(), "SRVGGNetCompact x4 (2 convs, 8 features, 3 channels)");
    assert!(matches!(c.net, UpscaleNet::Compact(_)));
}

#[test]
fn original_esrgan_key_layout_loads_to_the_same_network() {
    let Some(gpu) = shared_gpu() else { return };
    let d = dir("rrdb_x4");
    let src = open_weights(&d.join("model_esrgan_old.pth")).unwrap();
    assert!(src.contains("body.1.rdb3.conv5.weight") && src.contains("conv_up2.bias"));
    let old = UpscaleModel::load(gpu, &src, DType::F32).unwrap();
    let new = load(gpu, &d.join("model.safetensors"), DType::F32);
    let (shape, x) = tensor(&d.join("inputs.safetensors"), "image");
    assert_eq!(run(gpu, &old, &x, &shape).1, run(gpu, &new, &x, &shape).1);
}

#[test]
fn bsrgan_key_layout_loads_and_unknown_variants_are_refused() {
    let Some(gpu) = shared_gpu() else { return };
    let d = dir("rrdb_x4");
    let tmp = crate::common::temp_dir("upscale-bsrgan");
    // BSRGAN / RealSR names: RRDB_trunk.N.RDBk.convj, trunk_conv, upconvK, HRconv.
    let p = tmp.join("bsrgan.safetensors");
    edited(&d.join("model.safetensors"), &p, |n, s, v| {
        let n = if let Some(rest) = n.strip_prefix("body.") {
            let (i, rest) = rest.split_once('.').unwrap();
            let (rdb, rest) = rest.split_once('.').unwrap();
            format!("RRDB_trunk.{i}.{}.{rest}", rdb.to_uppercase())
        } else {
            n.replace("conv_body", "trunk_conv").replace("conv_up", "upconv").replace("conv_hr", "HRconv")
        };
        Some((n, s, v))
    });
    let bsrgan = load(gpu, &p, DType::F32);
    let base = load(gpu, &d.join("model.safetensors"), DType::F32);
    let (shape, x) = tensor(&d.join("inputs.safetensors"), "image");
    assert_eq!(run(gpu, &bsrgan, &x, &shape).1, run(gpu, &base, &x, &shape).1);
    // ESRGAN+ adds a 1x1 conv to every dense block: not this network, so refused.
    let p = tmp.join("plus.safetensors");
    let st = SafeTensors::open(&d.join("model.safetensors")).unwrap();
    let mut owned: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .names()
        .map(|n| {
            let (shape, v) = st.f32_any(n).unwrap();
            (n.to_string(), shape, v)
        })
        .collect();
    owned.push(("body.0.rdb1.conv1x1.weight".into(), vec![4, 8, 1, 1], vec![0.1; 32]));
    let refs: Vec<(&str, &[usize], &[f32])> =
        owned.iter().map(|(n, s, v)| (n.as_str(), s.as_slice(), v.as_slice())).collect();
    write(&p, &refs, Dtype::F32).unwrap();
    let e = UpscaleModel::load(gpu, &open_weights(&p).unwrap(), DType::F32)
        .err()
        .expect("ESRGAN+ was accepted")
        .to_string();
    assert!(e.contains("body.0.rdb1.conv1x1.weight") && e.contains("does not use"), "{e}");
}

#[test]
fn f16_path_stays_within_its_stated_tolerance() {
    let Some(gpu) = shared_gpu() else { return };
    if !gpu.features().shader_f16 {
        eprintln!("skipped: {} has no f16", gpu.info.name);
        return;
    }
    for case in CASES {
        let d = dir(case);
        let (shape, x) = tensor(&d.join("inputs.safetensors"), "image");
        let (_, want) = tensor(&d.join("expected.safetensors"), "output");
        let model = load(gpu, &d.join("model.pth"), DType::F16);
        let err = max_abs_diff(&run(gpu, &model, &x, &shape).1, &want);
        eprintln!("{case}: max |sdgraph f16 - pytorch| = {err:e}");
        assert!(err <= F16_TOL, "{case}: f16 max abs diff {err} > {F16_TOL}");
    }
}

/// The fixture's tensors, with `edit` applied, written as a new safetensors file.
fn edited(src: &Path, out: &Path, edit: impl Fn(&str, Vec<usize>, Vec<f32>) -> Option<(String, Vec<usize>, Vec<f32>)>) {
    let st = SafeTensors::open(src).unwrap();
    let owned: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .names()
        .filter_map(|n| {
            let (s, v) = st.f32_any(n).unwrap();
            edit(n, s, v)
        })
        .collect();
    let refs: Vec<(&str, &[usize], &[f32])> =
        owned.iter().map(|(n, s, v)| (n.as_str(), s.as_slice(), v.as_slice())).collect();
    write(out, &refs, Dtype::F32).unwrap();
}

#[test]
fn unknown_and_broken_layouts_are_refused_naming_the_key() {
    let Some(gpu) = shared_gpu() else { return };
    let tmp = crate::common::temp_dir("upscale-layouts");
    let err = |p: &Path| match open_weights(p) {
        Err(e) => e.to_string(),
        Ok(src) => match UpscaleModel::load(gpu, &src, DType::F32) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{} loaded", p.display()),
        },
    };
    let x4 = dir("rrdb_x4").join("model.safetensors");
    // Not an upscaler at all.
    let p = tmp.join("other.safetensors");
    write(&p, &[("encoder.weight", &[2, 2], &[0.0; 4])], Dtype::F32).unwrap();
    let e = err(&p);
    assert!(e.contains("unknown upscale model layout") && e.contains("encoder.weight"), "{e}");
    // A misshapen dense-block conv.
    let p = tmp.join("bad-shape.safetensors");
    edited(&x4, &p, |n, s, v| {
        if n == "body.1.rdb2.conv3.weight" { Some((n.into(), vec![4, 16, 1, 9], v)) } else { Some((n.into(), s, v)) }
    });
    let e = err(&p);
    assert!(e.contains("body.1.rdb2.conv3.weight") && e.contains("expected [4, 16, 3, 3]"), "{e}");
    // A missing tensor.
    let p = tmp.join("missing.safetensors");
    edited(&x4, &p, |n, s, v| (n != "conv_hr.bias").then(|| (n.into(), s, v)));
    let e = err(&p);
    assert!(e.contains("conv_hr.bias") && e.contains("missing"), "{e}");
    // A compact net whose last conv is not channels x scale^2.
    let p = tmp.join("compact.safetensors");
    edited(&dir("srvgg_x4").join("model.safetensors"), &p, |n, s, v| {
        if n.starts_with("body.6.") {
            let mut s2 = s.clone();
            s2[0] = 47;
            let keep = v.len() / s[0] * 47;
            Some((n.into(), s2, v[..keep].to_vec()))
        } else {
            Some((n.into(), s, v))
        }
    });
    let e = err(&p);
    assert!(e.contains("body.6.weight") && e.contains("47 output channels"), "{e}");
}
