//! KSamplerAdvanced and the custom-sampling nodes (KSamplerSelect, the schedulers, SplitSigmas, SetFirstSigma,
//! RandomNoise, DisableNoise, BasicGuider, CFGGuider, SamplerCustom, SamplerCustomAdvanced) on the tiny fixture
//! checkpoint, against KSampler and against ComfyUI's formulas computed here in f64.

use crate::common::sd_tiny::full_vocab_checkpoint;

use std::path::Path;

use graph::exec::Executor;
use graph::{ParamValue, Registry, Value};
use nodes::payload::{Latent, Sigmas};

use crate::common::call_kind;

/// Runs one node kind directly (see [`call_kind`]), its inputs by reference.
fn call(
    reg: &Registry,
    kind: &str,
    inputs: &[(&str, &Value)],
    params: &[(&str, ParamValue)],
) -> Result<Vec<Value>, String> {
    let owned: Vec<(&str, Value)> = inputs.iter().map(|(k, v)| (*k, (*v).clone())).collect();
    call_kind(reg, kind, &owned, params)
}

fn all(reg: &Registry, kind: &str, inputs: &[(&str, &Value)], params: &[(&str, ParamValue)]) -> Vec<Value> {
    call(reg, kind, inputs, params).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

fn one(reg: &Registry, kind: &str, inputs: &[(&str, &Value)], params: &[(&str, ParamValue)]) -> Value {
    all(reg, kind, inputs, params).remove(0)
}

fn s(v: &str) -> ParamValue {
    ParamValue::String(v.into())
}

fn i(v: i128) -> ParamValue {
    ParamValue::Int(v)
}

fn f(v: f64) -> ParamValue {
    ParamValue::Float(v)
}

fn samples(v: &Value) -> Vec<f32> {
    v.downcast::<Latent>().expect("a latent").samples.clone()
}

fn sigmas(v: &Value) -> Vec<f64> {
    v.downcast::<Sigmas>().expect("sigmas").0.clone()
}

fn sigmas_value(v: Vec<f64>) -> Value {
    Value::payload(Sigmas(v))
}

/// Whether two latents are equal bit for bit; else how many values differ and by how much at most.
fn bit_diff(a: &[f32], b: &[f32]) -> Option<String> {
    assert_eq!(a.len(), b.len());
    let differ: Vec<f32> =
        a.iter().zip(b).filter(|(x, y)| x.to_bits() != y.to_bits()).map(|(x, y)| (x - y).abs()).collect();
    (!differ.is_empty()).then(|| {
        format!(
            "{} of {} values differ, by up to {}",
            differ.len(),
            a.len(),
            differ.iter().fold(0.0f32, |m, d| m.max(*d))
        )
    })
}

#[track_caller]
fn assert_bits(a: &Value, b: &Value, what: &str) {
    if let Some(d) = bit_diff(&samples(a), &samples(b)) {
        panic!("{what}: {d}");
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// The tiny checkpoint loaded, two prompts and an empty 64x64 latent.
struct Setup {
    reg: Registry,
    model: Value,
    pos: Value,
    neg: Value,
    empty: Value,
    _dir: crate::common::TempDir,
}

fn setup(name: &str) -> Option<Setup> {
    gpu::testing::shared_gpu()?;
    let dir = crate::common::temp_dir(name);
    let ckpt = full_vocab_checkpoint(&dir);
    let reg = nodes::builtin_registry();
    let loaded = all(&reg, "CheckpointLoaderSimple", &[], &[("ckpt_name", s(&ckpt.display().to_string()))]);
    let clip = &loaded[1];
    let pos = one(&reg, "CLIPTextEncode", &[("clip", clip)], &[("text", s("a red fox in the snow"))]);
    let neg = one(&reg, "CLIPTextEncode", &[("clip", clip)], &[("text", s("blurry"))]);
    let empty = one(&reg, "EmptyLatentImage", &[], &[("width", i(64)), ("height", i(64)), ("batch_size", i(1))]);
    Some(Setup { model: loaded[0].clone(), pos, neg, empty, reg, _dir: dir })
}

impl Setup {
    fn ksampler(&self, latent: &Value, seed: i128, sampler: &str, scheduler: &str, cfg: f64, denoise: f64) -> Value {
        let inputs =
            [("model", &self.model), ("positive", &self.pos), ("negative", &self.neg), ("latent_image", latent)];
        let params = [
            ("seed", i(seed)),
            ("steps", i(4)),
            ("cfg", f(cfg)),
            ("sampler_name", s(sampler)),
            ("scheduler", s(scheduler)),
            ("denoise", f(denoise)),
        ];
        one(&self.reg, "KSampler", &inputs, &params)
    }

    #[allow(clippy::too_many_arguments)]
    fn advanced(
        &self,
        latent: &Value,
        add_noise: bool,
        seed: i128,
        sampler: &str,
        scheduler: &str,
        start: i128,
        end: i128,
        leftover: bool,
    ) -> Value {
        let inputs =
            [("model", &self.model), ("positive", &self.pos), ("negative", &self.neg), ("latent_image", latent)];
        let onoff = |b: bool| s(if b { "enable" } else { "disable" });
        let params = [
            ("add_noise", onoff(add_noise)),
            ("noise_seed", i(seed)),
            ("steps", i(4)),
            ("cfg", f(5.0)),
            ("sampler_name", s(sampler)),
            ("scheduler", s(scheduler)),
            ("start_at_step", i(start)),
            ("end_at_step", i(end)),
            ("return_with_leftover_noise", onoff(leftover)),
        ];
        one(&self.reg, "KSamplerAdvanced", &inputs, &params)
    }

    fn select(&self, sampler: &str) -> Value {
        one(&self.reg, "KSamplerSelect", &[], &[("sampler_name", s(sampler))])
    }

    fn basic_scheduler(&self, scheduler: &str, steps: i128, denoise: f64) -> Value {
        let params = [("scheduler", s(scheduler)), ("steps", i(steps)), ("denoise", f(denoise))];
        one(&self.reg, "BasicScheduler", &[("model", &self.model)], &params)
    }

    /// SamplerCustom's (output, denoised_output).
    fn custom(
        &self,
        latent: &Value,
        add_noise: bool,
        seed: i128,
        cfg: f64,
        sampler: &Value,
        sigmas: &Value,
    ) -> (Value, Value) {
        let inputs = [
            ("model", &self.model),
            ("positive", &self.pos),
            ("negative", &self.neg),
            ("sampler", sampler),
            ("sigmas", sigmas),
            ("latent_image", latent),
        ];
        let params = [("add_noise", ParamValue::Bool(add_noise)), ("noise_seed", i(seed)), ("cfg", f(cfg))];
        let mut out = all(&self.reg, "SamplerCustom", &inputs, &params);
        let denoised = out.pop().unwrap();
        (out.pop().unwrap(), denoised)
    }

    /// SamplerCustomAdvanced's (output, denoised_output).
    fn custom_advanced(
        &self,
        noise: &Value,
        guider: &Value,
        sampler: &Value,
        sigmas: &Value,
        latent: &Value,
    ) -> (Value, Value) {
        let inputs =
            [("noise", noise), ("guider", guider), ("sampler", sampler), ("sigmas", sigmas), ("latent_image", latent)];
        let mut out = all(&self.reg, "SamplerCustomAdvanced", &inputs, &[]);
        let denoised = out.pop().unwrap();
        (out.pop().unwrap(), denoised)
    }

    fn cfg_guider(&self, cfg: f64) -> Value {
        let inputs = [("model", &self.model), ("positive", &self.pos), ("negative", &self.neg)];
        one(&self.reg, "CFGGuider", &inputs, &[("cfg", f(cfg))])
    }

    fn random_noise(&self, seed: i128) -> Value {
        one(&self.reg, "RandomNoise", &[], &[("noise_seed", i(seed))])
    }
}

#[test]
fn ksampler_advanced_over_the_full_range_is_ksampler_bit_for_bit() {
    let Some(t) = setup("ksa-full") else { return };
    // uni_pc: a sampler whose KSampler schedule drops the penultimate sigma; euler_ancestral: noise from seed + 1.
    for (sampler, scheduler) in [("euler_ancestral", "normal"), ("uni_pc", "karras"), ("dpmpp_2m", "exponential")] {
        let ks = t.ksampler(&t.empty, 7, sampler, scheduler, 5.0, 1.0);
        for leftover in [false, true] {
            let ka = t.advanced(&t.empty, true, 7, sampler, scheduler, 0, 10000, leftover);
            assert_bits(&ka, &ks, &format!("{sampler}/{scheduler} leftover {leftover}"));
        }
        // The comparison can fail: another seed moves every value.
        let other = t.advanced(&t.empty, true, 8, sampler, scheduler, 0, 10000, false);
        assert!(bit_diff(&samples(&other), &samples(&ks)).is_some(), "{sampler}: seed 8 gave seed 7's latent");
    }
}

#[test]
fn ksampler_advanced_split_run_is_one_full_run_for_euler() {
    let Some(t) = setup("ksa-split") else { return };
    let full = t.ksampler(&t.empty, 3, "euler", "normal", 5.0, 1.0);
    // Steps 0..2 with the noise left in, then 2..4 on that latent without new noise: ComfyUI's two-pass workflow.
    let first = t.advanced(&t.empty, true, 3, "euler", "normal", 0, 2, true);
    let second = t.advanced(&first, false, 3, "euler", "normal", 2, 10000, false);
    assert_bits(&second, &full, "two passes against one");
    let d = max_abs_diff(&samples(&first), &samples(&full));
    assert!(d > 0.1, "the first pass should stop with noise left: {d}");
    // The noise seed of a pass without noise does not matter to euler.
    let second_other_seed = t.advanced(&first, false, 99, "euler", "normal", 2, 10000, false);
    assert_bits(&second_other_seed, &full, "second pass, other seed");

    // Without leftover noise, the last step of the part goes to 0: ComfyUI's sigmas[:end + 1] with the last set to 0.
    let schedule = sigmas(&t.basic_scheduler("normal", 4, 1.0));
    let forced = t.advanced(&t.empty, true, 3, "euler", "normal", 0, 2, false);
    let (custom, _) =
        t.custom(&t.empty, true, 3, 5.0, &t.select("euler"), &sigmas_value(vec![schedule[0], schedule[1], 0.0]));
    assert_bits(&forced, &custom, "end_at_step 2 without leftover noise");
    assert!(bit_diff(&samples(&forced), &samples(&first)).is_some(), "the forced last step changed nothing");
    // A middle part: sigmas 1..=3, the last kept (leftover) or set to 0.
    let mid = t.advanced(&first, false, 3, "euler", "normal", 1, 3, true);
    let (want, _) = t.custom(&first, false, 3, 5.0, &t.select("euler"), &sigmas_value(schedule[1..=3].to_vec()));
    assert_bits(&mid, &want, "steps 1..3 with leftover noise");

    // start_at_step at or past the last step: the input comes back unchanged.
    for start in [4, 5, 10000] {
        let same = t.advanced(&first, true, 3, "euler", "normal", start, 10000, false);
        assert_bits(&same, &first, &format!("start_at_step {start}"));
    }
}

#[test]
fn sampler_custom_with_ksampler_select_and_basic_scheduler_is_ksampler_bit_for_bit() {
    let Some(t) = setup("custom-vs-ksampler") else { return };
    let picture = t.ksampler(&t.empty, 11, "euler", "normal", 5.0, 1.0);
    let cases = [
        ("euler", "normal", 1.0, &t.empty),
        ("euler_ancestral", "karras", 1.0, &t.empty),
        ("dpmpp_2m", "exponential", 0.6, &picture),
        ("heun", "simple", 0.5, &picture),
    ];
    for (sampler, scheduler, denoise, latent) in cases {
        let what = format!("{sampler}/{scheduler} denoise {denoise}");
        let ks = t.ksampler(latent, 21, sampler, scheduler, 5.0, denoise);
        let sigmas = t.basic_scheduler(scheduler, 4, denoise);
        let select = t.select(sampler);
        let (custom, _) = t.custom(latent, true, 21, 5.0, &select, &sigmas);
        assert_bits(&custom, &ks, &format!("SamplerCustom {what}"));
        let (adv, _) = t.custom_advanced(&t.random_noise(21), &t.cfg_guider(5.0), &select, &sigmas, latent);
        assert_bits(&adv, &ks, &format!("SamplerCustomAdvanced {what}"));
    }
    // BasicGuider: the positive alone, as KSampler at cfg 1 (which never runs the negative) and CFGGuider at cfg 1.
    let ks = t.ksampler(&t.empty, 5, "euler", "normal", 1.0, 1.0);
    let basic = one(&t.reg, "BasicGuider", &[("model", &t.model), ("conditioning", &t.pos)], &[]);
    let (sigmas, select, noise) = (t.basic_scheduler("normal", 4, 1.0), t.select("euler"), t.random_noise(5));
    let (b, _) = t.custom_advanced(&noise, &basic, &select, &sigmas, &t.empty);
    assert_bits(&b, &ks, "BasicGuider against KSampler cfg 1");
    let (c, _) = t.custom_advanced(&noise, &t.cfg_guider(1.0), &select, &sigmas, &t.empty);
    assert_bits(&c, &ks, "CFGGuider cfg 1 against KSampler cfg 1");
    let (g, _) = t.custom_advanced(&noise, &t.cfg_guider(5.0), &select, &sigmas, &t.empty);
    assert!(bit_diff(&samples(&g), &samples(&ks)).is_some(), "cfg 5 gave cfg 1's latent");
    // As in ComfyUI, only KSampler drops uni_pc's penultimate sigma: SamplerCustom over BasicScheduler differs.
    let ks = t.ksampler(&t.empty, 21, "uni_pc", "normal", 5.0, 1.0);
    let (custom, _) = t.custom(&t.empty, true, 21, 5.0, &t.select("uni_pc"), &t.basic_scheduler("normal", 4, 1.0));
    assert!(bit_diff(&samples(&custom), &samples(&ks)).is_some(), "uni_pc: SamplerCustom should keep every sigma");
}

#[test]
fn disable_noise_and_denoised_output() {
    let Some(t) = setup("custom-denoised") else { return };
    let picture = t.ksampler(&t.empty, 5, "euler", "normal", 5.0, 1.0);
    let schedule = t.basic_scheduler("normal", 4, 1.0);
    let split = all(&t.reg, "SplitSigmas", &[("sigmas", &schedule)], &[("step", i(2))]);
    let (high, low) = (&split[0], &split[1]);
    let disabled = one(&t.reg, "DisableNoise", &[], &[]);
    let euler = t.select("euler");

    // DisableNoise over the low sigmas is KSamplerAdvanced without noise from step 2.
    let (out, denoised) = t.custom_advanced(&disabled, &t.cfg_guider(5.0), &euler, low, &picture);
    let ka = t.advanced(&picture, false, 0, "euler", "normal", 2, 10000, false);
    assert_bits(&out, &ka, "DisableNoise + SamplerCustomAdvanced against KSamplerAdvanced");
    // Euler's last step to sigma 0 lands on the last denoised estimate, up to rounding.
    let d = max_abs_diff(&samples(&out), &samples(&denoised));
    assert!(d < 1e-4, "output and denoised_output after the step to 0: {d}");
    assert!(max_abs_diff(&samples(&denoised), &samples(&picture)) > 1e-3, "denoised_output is the input");

    // denoised_output is the last step's estimate: over the high sigmas [s0, s1, s2] it is the model's estimate at
    // s1 of the latent after the first step, which a one-step run from there gives on its own.
    let h = sigmas(high);
    let (full, full_denoised) = t.custom(&t.empty, true, 9, 5.0, &euler, high);
    let (step1, step1_denoised) = t.custom(&t.empty, true, 9, 5.0, &euler, &sigmas_value(h[..2].to_vec()));
    let (step2, step2_denoised) = t.custom(&step1, false, 9, 5.0, &euler, &sigmas_value(h[1..].to_vec()));
    assert_bits(&step2, &full, "high sigmas in two runs");
    assert_bits(&full_denoised, &step2_denoised, "denoised_output is the last step's");
    assert!(
        bit_diff(&samples(&full_denoised), &samples(&step1_denoised)).is_some(),
        "denoised_output is the first step's"
    );
    assert!(max_abs_diff(&samples(&full), &samples(&full_denoised)) > 0.05, "leftover noise should separate them");

    // No step to run: one sigma (0) returns the input, an empty schedule too; denoised_output is the output.
    for step in [4, 9] {
        let low = all(&t.reg, "SplitSigmas", &[("sigmas", &schedule)], &[("step", i(step))]).remove(1);
        assert_eq!(sigmas(&low).len(), usize::from(step == 4), "SplitSigmas step {step}");
        let (out, denoised) = t.custom_advanced(&disabled, &t.cfg_guider(5.0), &euler, &low, &picture);
        assert_bits(&out, &picture, &format!("step {step}: output"));
        assert_bits(&denoised, &picture, &format!("step {step}: denoised_output"));
    }
}

/// SD 1.x's sigmas in f64: ComfyUI's `make_beta_schedule("linear", 1000, 0.00085, 0.012)` and
/// `sqrt((1 - alphas_cumprod) / alphas_cumprod)`.
fn sd15_sigmas_f64() -> Vec<f64> {
    let (a, b) = (0.00085f64.sqrt(), 0.012f64.sqrt());
    let mut acp = 1.0;
    (0..1000)
        .map(|k| {
            let beta = (a + (b - a) * k as f64 / 999.0).powi(2);
            acp *= 1.0 - beta;
            ((1.0 - acp) / acp).sqrt()
        })
        .collect()
}

#[track_caller]
fn assert_close(got: &[f64], want: &[f64], rel: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} against {want:?}");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= rel * w.abs(), "{what}: sigma {k} is {g}, want {w}");
        assert_eq!(*g, f64::from(*g as f32), "{what}: sigma {k} is not a float32 value");
    }
}

#[test]
fn sigma_nodes_follow_comfyuis_formulas() {
    let Some(t) = setup("custom-sigmas") else { return };
    // BasicScheduler against the ComfyUI fixture's KSampler schedules: BasicScheduler keeps the last steps + 1 of
    // calculate_sigmas(int(steps / denoise)), which for a sampler that keeps every sigma is KSampler's schedule.
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sampling/sampling.json"))
            .unwrap(),
    )
    .unwrap();
    let mut compared = 0;
    for case in fixture["schedules"].as_array().unwrap() {
        if case["sampler"] != "euler" {
            continue;
        }
        let (name, steps, denoise) =
            (case["scheduler"].as_str().unwrap(), case["steps"].as_i64().unwrap(), case["denoise"].as_f64().unwrap());
        let want: Vec<f64> = case["sigmas"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let keep = (steps as usize + 1).min(want.len());
        let got = sigmas(&t.basic_scheduler(name, steps as i128, denoise));
        assert_close(&got, &want[want.len() - keep..], 1e-6, &format!("BasicScheduler {name} {steps} {denoise}"));
        compared += 1;
    }
    assert!(compared >= 50, "only {compared} fixture schedules");

    // KarrasScheduler: (max^(1/rho) + i/(n-1) (min^(1/rho) - max^(1/rho)))^rho, then 0.
    for (smax, smin, rho) in [(14.614642, 0.0291675, 7.0), (80.0, 0.002, 3.5), (1.5, 0.3, 1.0)] {
        for n in [1usize, 2, 7, 20] {
            let params = [("steps", i(n as i128)), ("sigma_max", f(smax)), ("sigma_min", f(smin)), ("rho", f(rho))];
            let got = sigmas(&one(&t.reg, "KarrasScheduler", &[], &params));
            let (lo, hi) = (smin.powf(1.0 / rho), smax.powf(1.0 / rho));
            let ramp = |k: usize| if n == 1 { 0.0 } else { k as f64 / (n - 1) as f64 };
            let want: Vec<f64> = (0..n).map(|k| (hi + ramp(k) * (lo - hi)).powf(rho)).chain([0.0]).collect();
            assert_close(&got, &want, 2e-6, &format!("Karras {smax} {smin} {rho} n {n}"));
        }
    }
    // ExponentialScheduler: exp(linspace(ln max, ln min, n)), then 0.
    for (smax, smin) in [(14.614642, 0.0291675), (120.0, 0.5)] {
        for n in [1usize, 2, 9, 20] {
            let params = [("steps", i(n as i128)), ("sigma_max", f(smax)), ("sigma_min", f(smin))];
            let got = sigmas(&one(&t.reg, "ExponentialScheduler", &[], &params));
            let (a, b) = (smax.ln(), smin.ln());
            let at = |k: usize| if n == 1 { a } else { a + (b - a) * k as f64 / (n - 1) as f64 };
            let want: Vec<f64> = (0..n).map(|k| at(k).exp()).chain([0.0]).collect();
            assert_close(&got, &want, 2e-6, &format!("Exponential {smax} {smin} n {n}"));
        }
    }
    // With the model's own sigma_min/max (float32 values) and rho 7 they are BasicScheduler's karras/exponential,
    // bit for bit: ComfyUI's calculate_sigmas calls the same functions with float(model_sampling.sigma_min).
    let model = models::sampling::schedulers::ModelSigmas::sd15();
    let (mmax, mmin) = (model.sigma_max(), model.sigma_min());
    let params = [("steps", i(12)), ("sigma_max", f(mmax)), ("sigma_min", f(mmin)), ("rho", f(7.0))];
    assert_eq!(sigmas(&one(&t.reg, "KarrasScheduler", &[], &params)), sigmas(&t.basic_scheduler("karras", 12, 1.0)));
    let params = [("steps", i(12)), ("sigma_max", f(mmax)), ("sigma_min", f(mmin))];
    let exp = sigmas(&one(&t.reg, "ExponentialScheduler", &[], &params));
    assert_eq!(exp, sigmas(&t.basic_scheduler("exponential", 12, 1.0)));

    // SDTurboScheduler: the model's sigmas at timesteps [999, 899, ..., 99][10 - int(10 denoise)..][..steps], then 0.
    let sd = sd15_sigmas_f64();
    for denoise in [1.0, 0.7, 0.55, 0.3, 0.1, 0.0] {
        for steps in [1usize, 2, 4, 10] {
            let params = [("steps", i(steps as i128)), ("denoise", f(denoise))];
            let got = sigmas(&one(&t.reg, "SDTurboScheduler", &[("model", &t.model)], &params));
            let start = 10 - (10.0 * denoise) as usize;
            let want: Vec<f64> = (start..10).take(steps).map(|k| sd[999 - 100 * k]).chain([0.0]).collect();
            assert_close(&got, &want, 1e-6, &format!("SDTurbo steps {steps} denoise {denoise}"));
        }
    }

    // SplitSigmas: sigmas[:step + 1] and sigmas[step:], as Python slices.
    let schedule = t.basic_scheduler("karras", 5, 1.0);
    let v = sigmas(&schedule);
    assert_eq!(v.len(), 6);
    for step in [0usize, 1, 2, 5, 6, 40] {
        let out = all(&t.reg, "SplitSigmas", &[("sigmas", &schedule)], &[("step", i(step as i128))]);
        assert_eq!(sigmas(&out[0]), v[..(step + 1).min(6)].to_vec(), "high at {step}");
        assert_eq!(sigmas(&out[1]), v[step.min(6)..].to_vec(), "low at {step}");
    }
    // SetFirstSigma: the first replaced (as a float32 value), the rest kept.
    for sigma in [136.0, 0.1, 3.3] {
        let got = sigmas(&one(&t.reg, "SetFirstSigma", &[("sigmas", &schedule)], &[("sigma", f(sigma))]));
        assert_eq!(got[0], f64::from(sigma as f32), "SetFirstSigma {sigma}");
        assert_eq!(got[1..], v[1..], "SetFirstSigma {sigma}: the rest");
    }
}

#[test]
fn custom_sampling_errors_name_the_node_and_the_input() {
    let Some(t) = setup("custom-errors") else { return };
    let dir = crate::common::temp_dir("custom-errors-run");
    let ckpt = full_vocab_checkpoint(&dir);
    // `first_from` feeds SetFirstSigma (sigma 0), `sample_from` the sampler's sigmas.
    let graph = |first_from: &str, sample_from: &str| {
        format!(
            r#"(nodes: {{
                "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": {ckpt:?} }}),
                "pos": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "a fox" }}),
                "empty": (kind: "EmptyLatentImage", params: {{ "width": 32, "height": 32 }}),
                "sched": (kind: "BasicScheduler", inputs: {{ "model": "ckpt.model" }}, params: {{ "steps": 3 }}),
                "split": (kind: "SplitSigmas", inputs: {{ "sigmas": "sched.sigmas" }}, params: {{ "step": 9 }}),
                "first": (kind: "SetFirstSigma", inputs: {{ "sigmas": {first_from:?} }}, params: {{ "sigma": 0.0 }}),
                "k": (kind: "KarrasScheduler", params: {{ "rho": 0.0 }}),
                "x": (kind: "ExponentialScheduler", params: {{ "sigma_min": 0.0 }}),
                "select": (kind: "KSamplerSelect"),
                "noise": (kind: "RandomNoise"),
                "guide": (kind: "BasicGuider", inputs: {{ "model": "ckpt.model", "conditioning": "pos.conditioning" }}),
                "sample": (kind: "SamplerCustomAdvanced", inputs: {{ "noise": "noise.noise", "guider": "guide.guider",
                    "sampler": "select.sampler", "sigmas": {sample_from:?}, "latent_image": "empty.latent" }}),
                "dec": (kind: "VAEDecode", inputs: {{ "samples": "sample.output", "vae": "ckpt.vae" }}),
                "save": (kind: "SaveImage", inputs: {{ "images": "dec.image" }}),
            }})"#
        )
    };
    let first_error = |first_from: &str, sample_from: &str| {
        let g = crate::common::validate_str(&graph(first_from, sample_from), &t.reg).unwrap_or_else(|e| panic!("{e}"));
        let r = crate::common::run(&mut Executor::default(), &g, &dir);
        assert!(!r.ok, "{first_from} -> {sample_from}: ran");
        r.errors().remove(0)
    };
    // An empty schedule has no first sigma.
    let e = first_error("split.low_sigmas", "first.sigmas");
    assert!(e.starts_with("node \"first\" (SetFirstSigma): input \"sigmas\""), "{e}");
    // A first sigma of 0 cannot be sampled from: the sampler names its sigmas input.
    let e = first_error("sched.sigmas", "first.sigmas");
    assert!(e.starts_with("node \"sample\" (SamplerCustomAdvanced): input \"sigmas\""), "{e}");
    assert!(e.contains("sigma 0 is 0"), "{e}");
    // Params ComfyUI cannot compute with either.
    let e = first_error("sched.sigmas", "k.sigmas");
    assert!(e.starts_with("node \"k\" (KarrasScheduler): param \"rho\""), "{e}");
    let e = first_error("sched.sigmas", "x.sigmas");
    assert!(e.starts_with("node \"x\" (ExponentialScheduler): param \"sigma_min\""), "{e}");
    // A value of the wrong port type is refused before running, naming the node and the input.
    let wrong =
        graph("sched.sigmas", "sched.sigmas").replace(r#""guider": "guide.guider""#, r#""guider": "select.sampler""#);
    let e = crate::common::errors_of(&wrong, &t.reg);
    assert!(e.contains("sample") && e.contains("guider") && e.contains("Sampler") && e.contains("Guider"), "{e}");
    // KSamplerAdvanced's switches take only ComfyUI's two values.
    let node = t.reg.get("KSamplerAdvanced").unwrap();
    let p = node.schema().find_param("add_noise").unwrap();
    assert!(p.kind.check(&s("sometimes")).is_err() && p.kind.check(&s("disable")).is_ok());
}
