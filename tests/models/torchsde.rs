//! `models::sampling::samplers::{SeedSequence, BrownianTree, BrownianTreeNoise}` against numpy's `SeedSequence`,
//! torchsde 0.2.6's `BrownianTree` and ComfyUI's `BrownianTreeNoiseSampler`, as recorded by
//! tests/fixtures/sampling/make_sampling_fixture.py (section `torchsde`): every value bit for bit (f32 bit patterns,
//! signed zeros included), no tolerance.

use crate::cases::sampling_fixture as fixture;
use models::sampling::noise::TorchRng;
use models::sampling::samplers::{
    BrownianTree, BrownianTreeNoise, Denoiser, Job, KSamplerNoise, NoHooks, Noise, NoiseSource, SeedSequence,
    sample_dpmpp_2m_sde, sample_dpmpp_2m_sde_heun, sample_dpmpp_3m_sde, sample_dpmpp_sde,
};
use serde_json::Value;

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// A number the fixture writes as a decimal string (seeds reach 2^64 - 1, past JSON's exact integers).
fn big(v: &Value) -> u128 {
    v.as_str().unwrap().parse().unwrap()
}

#[test]
fn seed_sequence_matches_numpy() {
    let seqs = fixture()["torchsde"]["seed_sequences"].as_array().unwrap();
    for s in seqs {
        let key: Vec<u128> = s["spawn_key"].as_array().unwrap().iter().map(big).collect();
        let pool = s["pool_size"].as_u64().unwrap() as usize;
        let want: Vec<u32> = s["state"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = SeedSequence::new(big(&s["entropy"]), &key, pool).generate_state(4);
        assert_eq!(got, want, "SeedSequence({}, spawn_key={key:?}, pool_size={pool})", s["entropy"]);
        // The first words do not depend on how many are asked for.
        assert_eq!(SeedSequence::new(big(&s["entropy"]), &key, pool).generate_state(1), want[..1]);
    }
    assert!(seqs.len() >= 10);
}

/// One recorded tree: its seeds (a list makes one tree per batch item), shape and sigma range.
struct Case<'a> {
    v: &'a Value,
    seeds: Vec<u64>,
    per_item: bool,
    shape: Vec<usize>,
    range: [f64; 2],
}

fn cases() -> Vec<Case<'static>> {
    fixture()["torchsde"]["trees"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let (seeds, per_item) = match &v["seed"] {
                Value::Array(list) => (list.iter().map(|s| big(s) as u64).collect(), true),
                s => (vec![big(s) as u64], false),
            };
            let shape = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            // float32 values, written as their shortest decimals.
            let f32_at = |k: &str| f64::from(v[k].as_f64().unwrap() as f32);
            let range = [f32_at("sigma_min"), f32_at("sigma_max")];
            Case { v, seeds, per_item, shape, range }
        })
        .collect()
}

impl Case<'_> {
    fn what(&self) -> String {
        format!(
            "seed {:?} shape {:?} ({} {} {})",
            self.seeds, self.shape, self.v["sampler"], self.v["scheduler"], self.v["steps"]
        )
    }

    /// Values per tree.
    fn tree_len(&self) -> usize {
        let n: usize = self.shape.iter().product();
        if self.per_item { n / self.shape[0] } else { n }
    }

    fn calls(&self) -> impl Iterator<Item = (f32, f32, Vec<f32>, Vec<f32>)> + '_ {
        self.v["calls"].as_array().unwrap().iter().map(|c| {
            let s0 = c["sigma"].as_f64().unwrap() as f32;
            let s1 = c["sigma_next"].as_f64().unwrap() as f32;
            (s0, s1, f32s(&c["w"]), f32s(&c["noise"]))
        })
    }
}

#[test]
fn brownian_tree_equals_torchsde() {
    let mut values = 0;
    for case in cases() {
        let mut trees: Vec<BrownianTree> =
            case.seeds.iter().map(|&s| BrownianTree::new(case.range[0], case.range[1], case.tree_len(), s)).collect();
        for (i, (s0, s1, want, _)) in case.calls().enumerate() {
            let (ta, tb) = if s0 < s1 { (s0, s1) } else { (s1, s0) };
            let got: Vec<f32> = trees.iter_mut().flat_map(|t| t.increment(f64::from(ta), f64::from(tb))).collect();
            assert_eq!(bits(&got), bits(&want), "{} call {i} [{ta}, {tb}]", case.what());
            values += got.len();
        }
    }
    eprintln!("BrownianTree: {values} values equal to torchsde's, bit for bit");
    assert!(values > 10_000);
}

/// ComfyUI's noise sampler is `sign * w / scale` with `scale = (sigma_next - sigma).abs().sqrt()` in float32. The
/// recorded values are exactly that with torch's own sqrt; sdgraph's are bit for bit the same where torch's sqrt is the
/// correctly rounded root (always on CUDA, and on CPU builds without MKL), within 2 ulps where it is not (the MKL
/// build on x86 the fixture came from: its vsSqrt is 1 ulp off for some inputs, which moves the quotient by up to 2
/// ulps).
#[test]
fn brownian_tree_noise_equals_comfyuis_noise_sampler() {
    let (mut values, mut calls, mut exact_calls, mut mkl_calls) = (0, 0, 0, 0);
    let mut per_item = 0;
    for case in cases() {
        // Any sigmas with that smallest positive and largest value give the same tree.
        let sigmas = [case.range[1], (case.range[0] + case.range[1]) / 2.0, case.range[0], 0.0];
        let mut noise = if case.per_item {
            per_item += 1;
            BrownianTreeNoise::per_item(&case.seeds, &sigmas, case.tree_len())
        } else {
            BrownianTreeNoise::new(case.seeds[0], &sigmas, case.tree_len())
        };
        let scales = case.v["calls"].as_array().unwrap().iter().map(|c| c["scale"].as_f64().unwrap() as f32);
        for (i, ((s0, s1, w, want), scale)) in case.calls().zip(scales).enumerate() {
            // The recorded noise is sign * w / (torch's scale), exactly.
            let sign = if s0 > s1 { -1.0f32 } else { 1.0 };
            let from_w: Vec<f32> = w.iter().map(|&v| (v * sign) / scale).collect();
            assert_eq!(bits(&from_w), bits(&want), "{} call {i}: noise from w", case.what());
            let mut got = vec![f32::NAN; want.len()];
            noise.fill_noise(f64::from(s0), f64::from(s1), &mut got);
            if (s1 - s0).abs().sqrt() == scale {
                assert_eq!(bits(&got), bits(&want), "{} call {i} ({s0} -> {s1})", case.what());
                exact_calls += 1;
            } else {
                let off = got.iter().zip(&want).map(|(&g, &v)| ulps(g, v)).max().unwrap();
                assert!(off <= 2, "{} call {i} ({s0} -> {s1}): {off} ulps", case.what());
                mkl_calls += 1;
            }
            calls += 1;
            values += got.len();
        }
    }
    assert_eq!(per_item, 1, "the fixture's list-of-seeds case");
    eprintln!(
        "BrownianTreeNoise: {calls} calls ({values} values): {exact_calls} bit for bit; {mkl_calls} where torch's \
         sqrt is not correctly rounded, within 2 ulps"
    );
    assert!(exact_calls >= 40);
}

#[test]
fn the_fixture_covers_what_it_says() {
    let cases = cases();
    let seeds: Vec<u64> = cases.iter().flat_map(|c| c.seeds.clone()).collect();
    assert!(seeds.contains(&u64::MAX) && seeds.iter().any(|&s| s > u64::from(u32::MAX) && s < u64::MAX));
    for shape in [[1, 4, 8, 8], [2, 4, 5, 7], [1, 1, 3, 5]] {
        assert!(cases.iter().any(|c| c.shape == shape), "{shape:?}");
    }
    for sampler in ["dpmpp_sde", "dpmpp_2m_sde"] {
        assert!(cases.iter().any(|c| c.v["sampler"] == sampler), "{sampler}");
    }
    // Queries outside the range (clamped), ascending ones and repeats.
    assert!(cases.iter().all(|c| c.calls().any(|(a, b, ..)| a.max(b) > c.range[1] as f32)));
    assert!(cases.iter().all(|c| c.calls().any(|(a, b, ..)| a < b)));
}

#[test]
fn equal_or_indistinguishable_times_give_zero() {
    // torchsde: `ta == tb` is zeros; times that differ but round to the same 6 decimals recurse forever there.
    let mut tree = BrownianTree::new(0.0291675, 14.614641, 6, 3);
    assert_eq!(tree.increment(1.0, 1.0), [0.0; 6]);
    assert_eq!(tree.increment(1.0, 1.000_000_1), [0.0; 6]);
    // Both clamped to the end.
    assert_eq!(tree.increment(15.0, 16.0), [0.0; 6]);
    let mut noise = BrownianTreeNoise::new(3, &[14.614641, 1.0, 0.0291675, 0.0], 6);
    let mut out = [1.0f32; 6];
    noise.fill_noise(2.0, 2.0, &mut out);
    assert_eq!(out, [0.0; 6]);
}

#[test]
fn increments_add_up_and_do_not_depend_on_the_query_order() {
    // The halfway tree fixes every node whatever is asked first: W(a, c) = W(a, b) + W(b, c) up to f32 rounding, and
    // a fresh tree asked in another order gives the same bits.
    let (lo, hi) = (0.0291675, 14.614641);
    let mut a = BrownianTree::new(lo, hi, 64, 42);
    let ab = a.increment(0.5, 2.0);
    let bc = a.increment(2.0, 7.25);
    let ac = a.increment(0.5, 7.25);
    for i in 0..64 {
        assert!((ab[i] + bc[i] - ac[i]).abs() <= 1e-5 * (1.0 + ac[i].abs()), "{i}");
    }
    let mut b = BrownianTree::new(lo, hi, 64, 42);
    assert_eq!(bits(&b.increment(0.5, 7.25)), bits(&ac));
    assert_eq!(bits(&b.increment(2.0, 7.25)), bits(&bc));
    // Another seed, another path.
    let mut c = BrownianTree::new(lo, hi, 64, 43);
    assert_ne!(bits(&c.increment(0.5, 7.25)), bits(&ac));
}

/// Records each call's sigmas (as float32) and output, passing them on from ComfyUI's noise sampler.
struct Watched {
    inner: BrownianTreeNoise,
    calls: Vec<([f32; 2], Vec<f32>)>,
}

impl NoiseSource for Watched {
    fn fill_noise(&mut self, sigma: f64, sigma_next: f64, out: &mut [f32]) {
        self.inner.fill_noise(sigma, sigma_next, out);
        self.calls.push(([sigma as f32, sigma_next as f32], out.to_vec()));
    }
}

/// A model that denoises to 0 (the noise the SDE samplers ask for depends only on the sigmas).
struct Zero;

impl Denoiser for Zero {
    type Error = std::convert::Infallible;

    fn denoise(&mut self, x: &[f32], _sigma: f64) -> Result<Vec<f32>, Self::Error> {
        Ok(vec![0.0; x.len()])
    }
}

/// |a - b| in units in the last place of f32 (same sign assumed; 0 when equal).
fn ulps(a: f32, b: f32) -> u32 {
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

/// The fixture's dpmpp_sde / dpmpp_2m_sde trajectories ran k-diffusion's samplers (dpmpp_2m_sde_heun /
/// dpmpp_3m_sde ComfyUI's) on ComfyUI's BrownianTreeNoiseSampler (seed = the KSampler seed). sdgraph's samplers ask [`BrownianTreeNoise`] for the same
/// sigma pairs and get the same noise; through `sample` with `KSamplerNoise::new(seed)` (which is how the KSampler
/// node calls it) the whole runs match.
#[test]
fn ksampler_sde_runs_draw_comfyuis_torchsde_noise() {
    let mut ran = 0;
    let (mut exact, mut total, mut worst) = (0, 0, 0);
    for case in fixture()["samplers"].as_array().unwrap() {
        let name = case["sampler"].as_str().unwrap();
        if !matches!(name, "dpmpp_sde" | "dpmpp_2m_sde" | "dpmpp_2m_sde_heun" | "dpmpp_3m_sde") {
            continue;
        }
        let seed = case["seed"].as_u64().unwrap();
        let sigmas: Vec<f64> = f32s(&case["sigmas"]).into_iter().map(f64::from).collect();
        let x0: Vec<f32> = f32s(&case["noise"]);
        let mut watched = Watched { inner: BrownianTreeNoise::new(seed, &sigmas, x0.len()), calls: Vec::new() };
        let job = Job { denoiser: &mut Zero, sigmas: &sigmas, hooks: &mut NoHooks };
        let noise = Noise { source: &mut watched, eta: 1.0, s_noise: 1.0 };
        match name {
            "dpmpp_sde" => sample_dpmpp_sde(job, x0, noise),
            "dpmpp_2m_sde" => sample_dpmpp_2m_sde(job, x0, noise),
            "dpmpp_2m_sde_heun" => sample_dpmpp_2m_sde_heun(job, x0, noise),
            _ => sample_dpmpp_3m_sde(job, x0, noise),
        }
        .unwrap();
        let want_sigmas: Vec<Vec<f32>> = case["noise_sigmas"].as_array().unwrap().iter().map(f32s).collect();
        let want_draws: Vec<Vec<f32>> = case["noise_draws"].as_array().unwrap().iter().map(f32s).collect();
        assert_eq!(watched.calls.len(), want_draws.len(), "{name}: noise calls");
        for (i, ((pair, got), (ws, wd))) in watched.calls.iter().zip(want_sigmas.iter().zip(&want_draws)).enumerate() {
            assert_eq!(&pair[..], &ws[..], "{name} call {i}: sigmas");
            // Bit for bit, but where ComfyUI's divisor, torch's MKL sqrt, is not the correctly rounded root (see
            // the tree tests): then every value is within 2 ulps (the divisor 1 ulp off).
            let off = got.iter().zip(wd).map(|(&g, &w)| ulps(g, w)).max().unwrap();
            assert!(off <= 2, "{name} call {i}: {off} ulps off");
            exact += usize::from(off == 0);
            total += 1;
            worst = worst.max(off);
        }
        // The same run through `sample`, as the KSampler node calls it.
        crate::samplers::run_case(case, Some(&mut KSamplerNoise::new(seed)));
        ran += 1;
    }
    eprintln!("SDE runs: {exact} of {total} noise calls bit for bit, the others within {worst} ulp");
    assert!(ran >= 7, "{ran} SDE cases");
    assert!(exact * 4 >= total * 3, "{exact} of {total} calls exact");
}

#[test]
fn ksampler_seed_comes_with_its_noise_stream() {
    // KSampler's noise carries its seed (ComfyUI's extra_args seed) and draws ancestral noise from seed + 1.
    for seed in [0u64, 1, 20240601, u64::MAX] {
        let mut k = KSamplerNoise::new(seed);
        assert_eq!(k.ksampler_seed(), Some(seed));
        let mut drawn = vec![0.0; 7];
        k.fill_noise(1.0, 0.5, &mut drawn);
        assert_eq!(drawn, TorchRng::new(seed.wrapping_add(1)).randn(&[7]));
        // A bare generator is just a stream: no tree for it.
        assert_eq!(TorchRng::new(seed).ksampler_seed(), None);
    }
    let tree = BrownianTreeNoise::new(5, &[14.6, 1.0, 0.0], 4);
    assert_eq!(tree.ksampler_seed(), None);
}
