//! ComfyUI's KSampler noise schedules for discrete-time (DDPM-trained) models such as SD 1.x.
//!
//! Mirrors Comfy-Org/ComfyUI:
//!
//! - `comfy/model_sampling.py` @ 2fd2083913be0894287f5f1d2abef8c5f94d1d0a: `ModelSamplingDiscrete` ([`ModelSigmas`]:
//!   float32 `sigmas`/`log_sigmas` buffers, `timestep` = [`ModelSigmas::timestep`], `sigma` =
//!   [`ModelSigmas::t_to_sigma`], `percent_to_sigma`);
//! - `comfy/ldm/modules/diffusionmodules/util.py` @ 22ec285c2a4446846c634cffcb69ac18352e5c69: `make_beta_schedule`
//!   ("linear", i.e. diffusers' scaled_linear);
//! - `comfy/samplers.py` @ 311c01406130b2acbe8ab291043502de26cf3871: `simple_scheduler`, `ddim_scheduler`,
//!   `normal_scheduler` (and `sgm_uniform` = `normal_scheduler(sgm=True)`), `calculate_sigmas`, and
//!   `KSampler.calculate_sigmas` / `KSampler.set_steps` ([`ksampler_sigmas`]: denoise < 1 and the samplers that
//!   discard the penultimate sigma); `beta_scheduler`, `linear_quadratic_schedule` and `kl_optimal_scheduler` as
//!   read at Comfy-Org/ComfyUI @ a125cd84b054a57729b5eecab930ca9408719832 (`SCHEDULER_HANDLERS`' menu order);
//! - `comfy/k_diffusion/sampling.py` `get_sigmas_karras` (rho 7) and `get_sigmas_exponential`, identical to
//!   k-diffusion 0.1.1's.
//!
//! ComfyUI computes these in float32 torch and returns a `torch.FloatTensor`; here they are computed in f64 from the
//! same float32 inputs (model sigmas, and `torch.linspace` float32 grids where ComfyUI has them) and the results are
//! rounded to f32, like ComfyUI's tensor, and returned as f64. They agree with ComfyUI to a few f32 ulps (checked to
//! 1e-6 relative by tests/models/schedulers.rs; torch's own float32 arithmetic is the difference).
//!
//! Not mirrored: KSamplerAdvanced's start/end steps. Unknown scheduler names are errors.

use std::fmt;
use std::str::FromStr;

/// The largest number of steps a schedule may be computed for (including `steps / denoise`). ComfyUI has no limit;
/// this only keeps a tiny `denoise` from asking for billions of sigmas.
pub const MAX_SCHEDULE_STEPS: usize = 1_000_000;

/// Why a schedule could not be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    #[error("steps must be at least 1")]
    ZeroSteps,
    #[error(
        "unknown scheduler {0:?} (known: simple, sgm_uniform, karras, exponential, ddim_uniform, beta, normal, \
         linear_quadratic, kl_optimal)"
    )]
    UnknownScheduler(String),
    #[error("the {scheduler} scheduler needs at least {min} steps (ComfyUI's gives NaN sigmas for fewer)")]
    TooFewSteps { scheduler: &'static str, min: usize },
    #[error("denoise must be a number from 0 to 1, got {0}")]
    BadDenoise(f64),
    #[error("{0} steps is more than the {MAX_SCHEDULE_STEPS} supported")]
    TooManySteps(usize),
    #[error("bad noise schedule: {0}")]
    BadModelSchedule(String),
}

/// A discrete model's noise levels: ComfyUI's `ModelSamplingDiscrete` buffers, `sigmas[t]` for timesteps
/// `t = 0..n` (increasing), stored as float32 like ComfyUI's (`sigmas.float()`, `sigmas.log().float()` of the
/// float64 values).
#[derive(Clone, PartialEq)]
pub struct ModelSigmas {
    sigmas: Vec<f32>,
    log_sigmas: Vec<f32>,
    /// Timesteps per table entry: 1, or ComfyUI's `skip_steps` for a distilled (LCM) schedule, whose 50 entries
    /// stand for the timesteps `20 k + 19` ([`ModelSigmas::distilled`]).
    stride: usize,
}

impl fmt::Debug for ModelSigmas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelSigmas")
            .field("len", &self.sigmas.len())
            .field("sigma_min", &self.sigma_min())
            .field("sigma_max", &self.sigma_max())
            .finish()
    }
}

/// `torch.linspace(start, end, steps)` on the CPU, for float64: `start + step * i` in the first half,
/// `end - step * (steps - 1 - i)` in the second (ATen `linspace_kernel`), each a fused multiply-add (one rounding) as
/// in torch's x86-64 build (checked against torch 2.11.0 for many lengths, scalar and vectorised paths alike).
pub(crate) fn linspace_f64(start: f64, end: f64, steps: usize) -> Vec<f64> {
    linspace(start, end, steps)
}

/// The same for float32 (start, end and step are float32, as in ATen).
pub(crate) fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    linspace(start, end, steps)
}

/// The float types [`linspace`] runs in: ATen computes in the tensor's own dtype.
trait LinspaceFloat:
    Copy + std::ops::Sub<Output = Self> + std::ops::Div<Output = Self> + std::ops::Neg<Output = Self>
{
    fn of(n: usize) -> Self;
    fn fma(self, a: Self, b: Self) -> Self;
}

impl LinspaceFloat for f64 {
    fn of(n: usize) -> f64 {
        n as f64
    }
    fn fma(self, a: f64, b: f64) -> f64 {
        self.mul_add(a, b)
    }
}

impl LinspaceFloat for f32 {
    fn of(n: usize) -> f32 {
        n as f32
    }
    fn fma(self, a: f32, b: f32) -> f32 {
        self.mul_add(a, b)
    }
}

/// [`linspace_f64`] in `T`.
fn linspace<T: LinspaceFloat>(start: T, end: T, steps: usize) -> Vec<T> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / T::of(steps - 1);
    let half = steps / 2;
    (0..steps)
        .map(|i| if i < half { step.fma(T::of(i), start) } else { (-step).fma(T::of(steps - 1 - i), end) })
        .collect()
}

impl ModelSigmas {
    /// Stable Diffusion 1.x (and 2.x): LDM's "linear" schedule (diffusers' `scaled_linear`), betas from 0.00085 to
    /// 0.012 over 1000 steps.
    pub fn sd15() -> ModelSigmas {
        ModelSigmas::scaled_linear(0.00085, 0.012, 1000).expect("the SD 1.x schedule is valid")
    }

    /// `make_beta_schedule("linear", n, linear_start, linear_end)`: `linspace(sqrt(start), sqrt(end), n) ** 2` in
    /// float64, then [`ModelSigmas::from_betas`].
    pub fn scaled_linear(linear_start: f64, linear_end: f64, timesteps: usize) -> Result<ModelSigmas, ScheduleError> {
        ModelSigmas::from_betas(&scaled_linear_betas(linear_start, linear_end, timesteps))
    }

    /// ComfyUI's `ModelSamplingDiscrete(model_config, zsnr)` for SD 1.x/2.x: [`ModelSigmas::sd15`], or with `zsnr`
    /// its float64 sigmas through [`rescale_zero_terminal_snr_sigmas`] before they are stored as float32 (as
    /// `_register_schedule(zsnr=True)` does; ModelSamplingDiscrete's `zsnr` switch).
    pub fn discrete(zsnr: bool) -> ModelSigmas {
        let mut sigmas = betas_to_sigmas(&scaled_linear_betas(0.00085, 0.012, 1000));
        if zsnr {
            sigmas = rescale_zero_terminal_snr_sigmas(&sigmas);
        }
        ModelSigmas::from_sigmas_f64(&sigmas).expect("the SD 1.x schedule is valid, rescaled or not")
    }

    /// ComfyUI's `ModelSamplingDiscreteDistilled` (comfy_extras/nodes_model_advanced.py, ModelSamplingDiscrete's
    /// `lcm`): of the float32 table, the `original_timesteps` entries at timesteps `n - 1 - k * skip` (`skip = n /
    /// original_timesteps`, 20 for 1000 and 50), in increasing order; timesteps map to entries through the stride
    /// (`timestep = argmin * skip + skip - 1`, `sigma(t)` at `(t - (skip - 1)) / skip`). `None` when there are
    /// fewer timesteps than `original_timesteps` or it is 0.
    pub fn distilled(&self, original_timesteps: usize) -> Option<ModelSigmas> {
        let n = self.sigmas.len();
        if original_timesteps == 0 || n < original_timesteps || self.stride != 1 {
            return None;
        }
        let skip = n / original_timesteps;
        let mut valid = vec![0f32; original_timesteps];
        for x in 0..original_timesteps {
            valid[original_timesteps - 1 - x] = self.sigmas[n - 1 - x * skip];
        }
        let f64s: Vec<f64> = valid.iter().map(|&s| f64::from(s)).collect();
        let mut m = ModelSigmas::from_sigmas_f64(&f64s).ok()?;
        m.stride = skip;
        Some(m)
    }

    /// Timesteps per table entry (1; 20 for the distilled LCM schedule).
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// `ModelSamplingDiscrete._register_schedule(given_betas=betas)`: `alphas_cumprod = cumprod(1 - betas)` (f64,
    /// in order), `sigmas = sqrt((1 - alphas_cumprod) / alphas_cumprod)`. Betas must lie in (0, 1).
    pub fn from_betas(betas: &[f64]) -> Result<ModelSigmas, ScheduleError> {
        if betas.len() < 2 {
            return Err(ScheduleError::BadModelSchedule(format!("{} betas; at least 2 are needed", betas.len())));
        }
        if let Some(b) = betas.iter().find(|b| !(**b > 0.0 && **b < 1.0)) {
            return Err(ScheduleError::BadModelSchedule(format!("beta {b} is not in (0, 1)")));
        }
        ModelSigmas::from_sigmas_f64(&betas_to_sigmas(betas))
    }

    /// `set_sigmas(sigmas)`: float64 sigmas, stored as float32 (and their logs, taken in f64, as float32). They must
    /// be finite, positive and increasing.
    pub fn from_sigmas_f64(sigmas: &[f64]) -> Result<ModelSigmas, ScheduleError> {
        if sigmas.len() < 2 {
            return Err(ScheduleError::BadModelSchedule(format!("{} sigmas; at least 2 are needed", sigmas.len())));
        }
        if let Some(s) = sigmas.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(ScheduleError::BadModelSchedule(format!("sigma {s} is not finite and positive")));
        }
        if sigmas.windows(2).any(|w| w[1] <= w[0]) {
            return Err(ScheduleError::BadModelSchedule("sigmas must increase with the timestep".into()));
        }
        Ok(ModelSigmas {
            sigmas: sigmas.iter().map(|&s| s as f32).collect(),
            log_sigmas: sigmas.iter().map(|&s| s.ln() as f32).collect(),
            stride: 1,
        })
    }

    /// The float32 sigmas, by timestep.
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The float32 log sigmas, by timestep.
    pub fn log_sigmas(&self) -> &[f32] {
        &self.log_sigmas
    }

    /// Number of discrete timesteps (1000 for SD).
    pub fn len(&self) -> usize {
        self.sigmas.len()
    }

    /// Always false: a schedule has at least two timesteps.
    pub fn is_empty(&self) -> bool {
        self.sigmas.is_empty()
    }

    /// `sigmas[0]` (0.0291675 for SD 1.x).
    pub fn sigma_min(&self) -> f64 {
        f64::from(self.sigmas[0])
    }

    /// `sigmas[-1]` (14.614642 for SD 1.x).
    pub fn sigma_max(&self) -> f64 {
        f64::from(self.sigmas[self.sigmas.len() - 1])
    }

    /// ComfyUI's `ModelSamplingDiscrete.timestep(sigma)`: the timestep whose log sigma is nearest to `ln(sigma)`,
    /// i.e. what ComfyUI feeds the UNet as its timestep (`timestep(sigma).float()`). Computed as ComfyUI computes it,
    /// in float32: `(log(sigma) - log_sigmas).abs().argmin()`, the first of equal distances. The precision matters
    /// where a sigma lies halfway between two table entries (the `normal` schedule at 19 steps, `sgm_uniform` at 18):
    /// float32 rounding makes the distances equal there and ComfyUI takes the lower timestep (943, not the 944 an
    /// f64 comparison finds). Sigmas of 0 or less give timestep 0. With a stride (the distilled schedule) the entry
    /// `k` found is timestep `k * stride + stride - 1`, as `ModelSamplingDiscreteDistilled.timestep`.
    pub fn timestep(&self, sigma: f64) -> usize {
        self.entry(sigma) * self.stride + self.stride - 1
    }

    /// The table entry nearest to `sigma` in log (see [`ModelSigmas::timestep`]).
    fn entry(&self, sigma: f64) -> usize {
        let ls = (sigma as f32).ln();
        let mut best = 0;
        let mut best_d = f32::INFINITY;
        for (i, &l) in self.log_sigmas.iter().enumerate() {
            let d = (ls - l).abs();
            if d < best_d {
                best_d = d;
                best = i;
            }
        }
        best
    }

    /// [`ModelSigmas::timestep`] as a float: the UNet timestep ComfyUI uses for `sigma` (quantised to an integer).
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
        self.timestep(sigma) as f64
    }

    /// k-diffusion's `DiscreteSchedule.sigma_to_t(sigma, quantize=False)`: the fractional timestep whose
    /// interpolated log sigma is `ln(sigma)`, clamped to `[0, n - 1]`. The inverse of [`ModelSigmas::t_to_sigma`].
    /// ComfyUI does not use it (it quantises, see [`ModelSigmas::sigma_to_t`]); A1111-style pipelines do.
    pub fn sigma_to_t_continuous(&self, sigma: f64) -> f64 {
        let ls = sigma.ln();
        let n = self.log_sigmas.len();
        // The last index whose log sigma is <= ln(sigma) (0 when there is none), at most n - 2.
        let low = self.log_sigmas.iter().rposition(|&l| ls - f64::from(l) >= 0.0).unwrap_or(0).min(n - 2);
        let (lo, hi) = (f64::from(self.log_sigmas[low]), f64::from(self.log_sigmas[low + 1]));
        let w = ((lo - ls) / (lo - hi)).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * (low + 1) as f64
    }

    /// ComfyUI's `ModelSamplingDiscrete.sigma(timestep)`: `t` clamped to `[0, n - 1]`, then
    /// `exp((1 - w) log_sigmas[floor t] + w log_sigmas[ceil t])` with `w = frac(t)`.
    /// With a stride, `t` is first mapped to `(t - (stride - 1)) / stride` (`ModelSamplingDiscreteDistilled.sigma`).
    pub fn t_to_sigma(&self, t: f64) -> f64 {
        let t = (t - (self.stride - 1) as f64) / self.stride as f64;
        let t = t.clamp(0.0, (self.log_sigmas.len() - 1) as f64);
        let low = t.floor();
        let high = t.ceil();
        let w = t - low;
        let ls = (1.0 - w) * f64::from(self.log_sigmas[low as usize]) + w * f64::from(self.log_sigmas[high as usize]);
        ls.exp()
    }

    /// [`ModelSigmas::t_to_sigma`] in ComfyUI's float32 steps (clamp, frac, the two products and the sum each
    /// rounded to f32; only the final exp in f64), as the `normal`/`sgm_uniform` schedulers compute it.
    fn t_to_sigma_f32(&self, t: f32) -> f64 {
        let t = (t - (self.stride - 1) as f32) / self.stride as f32;
        let t = t.clamp(0.0, (self.log_sigmas.len() - 1) as f32);
        let (low, high) = (t.floor(), t.ceil());
        let w = t - t.trunc();
        let ls = (1.0 - w) * self.log_sigmas[low as usize] + w * self.log_sigmas[high as usize];
        f64::from(ls).exp()
    }

    /// ComfyUI's `percent_to_sigma` (conditioning and ControlNet start/end percentages): 999999999.9 at 0 or less,
    /// 0 at 1 or more, else `sigma(torch.tensor((1 - percent) * 999)).item()` (ComfyUI's literal 999, whatever the
    /// number of timesteps), in ComfyUI's float32: the timestep a float32 tensor, the sigma a float32 value, computed
    /// as the `normal` schedule's sigmas are. So where a start or end falls on a schedule's timestep (start 0.5 and
    /// `normal` at 3 steps: both are sigma(499.5)), the sigma equals the schedule's exactly and ComfyUI's `>` / `<`
    /// keep the entry at that step; an f64 interpolation lands an ulp off and drops it half the time.
    pub fn percent_to_sigma(&self, percent: f64) -> f64 {
        if percent <= 0.0 {
            return 999_999_999.9;
        }
        if percent >= 1.0 {
            return 0.0;
        }
        f64::from(self.t_to_sigma_f32(((1.0 - percent) * 999.0) as f32) as f32)
    }
}

/// `make_beta_schedule("linear", n, start, end)`: `linspace(sqrt(start), sqrt(end), n) ** 2` in float64.
fn scaled_linear_betas(linear_start: f64, linear_end: f64, timesteps: usize) -> Vec<f64> {
    linspace_f64(linear_start.sqrt(), linear_end.sqrt(), timesteps).into_iter().map(|b| b * b).collect()
}

/// `alphas_cumprod = cumprod(1 - betas)`, `sigmas = sqrt((1 - alphas_cumprod) / alphas_cumprod)`, in float64.
fn betas_to_sigmas(betas: &[f64]) -> Vec<f64> {
    let mut acp = 1.0f64;
    betas
        .iter()
        .map(|b| {
            acp *= 1.0 - b;
            ((1.0 - acp) / acp).sqrt()
        })
        .collect()
}

/// ComfyUI's `rescale_zero_terminal_snr_sigmas` (comfy/model_sampling.py; Lin et al. 2023, "Common Diffusion Noise
/// Schedules and Sample Steps are Flawed"), in float64 in ComfyUI's order: `sqrt(alphas_cumprod)` shifted so the
/// last is 0 and scaled so the first keeps its value, squared, the last set to 4.8973451890853435e-08 (so the last
/// sigma is about 4518.8 instead of infinite), back to sigmas. At least two sigmas.
pub fn rescale_zero_terminal_snr_sigmas(sigmas: &[f64]) -> Vec<f64> {
    let mut a: Vec<f64> = sigmas.iter().map(|s| (1.0 / (s * s + 1.0)).sqrt()).collect();
    let (a0, at) = (a[0], a[a.len() - 1]);
    let scale = a0 / (a0 - at);
    for v in &mut a {
        *v = (*v - at) * scale;
    }
    let mut bar: Vec<f64> = a.iter().map(|v| v * v).collect();
    let last = bar.len() - 1;
    bar[last] = 4.897_345_189_085_343_5e-8;
    bar.iter().map(|b| ((1.0 - b) / b).sqrt()).collect()
}

/// The schedulers of ComfyUI's KSampler that this crate implements, by their ComfyUI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheduler {
    /// `normal`: timesteps evenly spaced (float32 `linspace`) from the one of sigma_max to the one of sigma_min,
    /// sigmas by log-linear interpolation, then 0.
    Normal,
    /// `karras`: Karras et al. (2022), rho 7, between the model's sigma_min and sigma_max, then 0.
    Karras,
    /// `exponential`: evenly spaced in log sigma from sigma_max to sigma_min, then 0.
    Exponential,
    /// `sgm_uniform`: like `normal` over `steps + 1` timesteps without the last (so it stops above sigma_min), then 0.
    SgmUniform,
    /// `simple`: every `n / steps`-th model sigma from the top, then 0.
    Simple,
    /// `ddim_uniform`: model sigmas at timesteps 1, 1 + k, 1 + 2k, ... (k = n / steps, integer), reversed, then 0.
    /// Note that it gives more than `steps` steps when `n % steps` leaves room (e.g. 31 for 30 steps), as ComfyUI's.
    DdimUniform,
    /// `beta`: model sigmas at the timesteps `rint(999 * ppf(1 - i / steps))` of the Beta(0.6, 0.6) distribution
    /// (Lee et al. 2024, "Beta Sampling is All You Need"), a timestep equal to the one before skipped (so it can give
    /// fewer than `steps` steps), then 0.
    Beta,
    /// `linear_quadratic`: Mochi's schedule scaled by sigma_max: `1 - s` where `s` rises linearly to 0.025 over the
    /// first `steps / 2` steps, then quadratically to 1 (the final 0). At 1 step: sigma_max, 0.
    LinearQuadratic,
    /// `kl_optimal`: `tan` of evenly spaced values from `atan(sigma_max)` to `atan(sigma_min)` (float32), then 0
    /// (A1111 PR 15608). Needs at least 2 steps: ComfyUI's divides by `steps - 1` and gives a NaN sigma at 1, which
    /// is an error here ([`ScheduleError::TooFewSteps`]).
    KlOptimal,
}

impl Scheduler {
    /// Every scheduler, in ComfyUI's menu order.
    pub const ALL: [Scheduler; 9] = [
        Scheduler::Simple,
        Scheduler::SgmUniform,
        Scheduler::Karras,
        Scheduler::Exponential,
        Scheduler::DdimUniform,
        Scheduler::Beta,
        Scheduler::Normal,
        Scheduler::LinearQuadratic,
        Scheduler::KlOptimal,
    ];

    /// Every scheduler's ComfyUI name, in [`Scheduler::ALL`]'s order (the KSampler menu).
    pub const NAMES: [&'static str; 9] = {
        let mut names = [""; 9];
        let mut i = 0;
        while i < names.len() {
            names[i] = Scheduler::ALL[i].name();
            i += 1;
        }
        names
    };

    /// The ComfyUI name.
    pub const fn name(self) -> &'static str {
        match self {
            Scheduler::Normal => "normal",
            Scheduler::Karras => "karras",
            Scheduler::Exponential => "exponential",
            Scheduler::SgmUniform => "sgm_uniform",
            Scheduler::Simple => "simple",
            Scheduler::DdimUniform => "ddim_uniform",
            Scheduler::Beta => "beta",
            Scheduler::LinearQuadratic => "linear_quadratic",
            Scheduler::KlOptimal => "kl_optimal",
        }
    }

    /// The scheduler of a ComfyUI name (exact, case-sensitive as in ComfyUI).
    pub fn from_name(name: &str) -> Result<Scheduler, ScheduleError> {
        Scheduler::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| ScheduleError::UnknownScheduler(name.into()))
    }

    /// ComfyUI's `calculate_sigmas(model_sampling, name, steps)`: `steps + 1` sigmas (ddim_uniform and beta: see
    /// [`Scheduler::DdimUniform`], [`Scheduler::Beta`]) ending in 0, decreasing.
    pub fn sigmas(self, model: &ModelSigmas, steps: usize) -> Result<Vec<f64>, ScheduleError> {
        if steps == 0 {
            return Err(ScheduleError::ZeroSteps);
        }
        if steps > MAX_SCHEDULE_STEPS {
            return Err(ScheduleError::TooManySteps(steps));
        }
        let sigmas = match self {
            Scheduler::Normal => normal(model, steps, false),
            Scheduler::SgmUniform => normal(model, steps, true),
            Scheduler::Karras => karras(steps, model.sigma_min(), model.sigma_max(), 7.0),
            Scheduler::Exponential => exponential(steps, model.sigma_min(), model.sigma_max()),
            Scheduler::Simple => simple(model, steps),
            Scheduler::DdimUniform => ddim_uniform(model, steps),
            Scheduler::Beta => beta(model, steps, 0.6, 0.6),
            Scheduler::LinearQuadratic => linear_quadratic(model, steps, 0.025),
            Scheduler::KlOptimal => {
                if steps < 2 {
                    return Err(ScheduleError::TooFewSteps { scheduler: self.name(), min: 2 });
                }
                kl_optimal(steps, model.sigma_min(), model.sigma_max())
            }
        };
        // torch.FloatTensor(sigs): every value rounded to float32.
        Ok(sigmas.into_iter().map(|s| f64::from(s as f32)).collect())
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Scheduler {
    type Err = ScheduleError;

    fn from_str(s: &str) -> Result<Scheduler, ScheduleError> {
        Scheduler::from_name(s)
    }
}

/// `normal_scheduler(model_sampling, steps, sgm)`.
fn normal(model: &ModelSigmas, steps: usize, sgm: bool) -> Vec<f64> {
    let start = model.timestep(model.sigma_max()) as f32;
    let end = model.timestep(model.sigma_min()) as f32;
    let mut append_zero = true;
    let timesteps = if sgm {
        let mut t = linspace_f32(start, end, steps + 1);
        t.pop();
        t
    } else {
        let mut steps = steps;
        // ComfyUI: a model whose smallest sigma is (nearly) 0 gets one more timestep instead of the appended 0.
        if model.t_to_sigma(f64::from(end)).abs() <= 1e-5 {
            steps += 1;
            append_zero = false;
        }
        linspace_f32(start, end, steps)
    };
    let mut sigs: Vec<f64> = timesteps.into_iter().map(|t| model.t_to_sigma_f32(t)).collect();
    if append_zero {
        sigs.push(0.0);
    }
    sigs
}

/// `get_sigmas_karras(n, sigma_min, sigma_max, rho)`, in ComfyUI's float32 steps: the ramp is float32
/// `linspace(0, 1, n)`, `max_inv_rho + ramp * (min_inv_rho - max_inv_rho)` is two float32 tensor ops with the Python
/// float scalars cast to float32, and only `** rho` is done in f64 here (torch's float32 pow is within an ulp of it).
pub fn karras(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let min_inv_rho = sigma_min.powf(1.0 / rho);
    let max_inv_rho = sigma_max.powf(1.0 / rho);
    let span = (min_inv_rho - max_inv_rho) as f32;
    let top = max_inv_rho as f32;
    let mut sigs: Vec<f64> =
        linspace_f32(0.0, 1.0, n).into_iter().map(|r| f64::from(top + r * span).powf(rho)).collect();
    sigs.push(0.0);
    sigs
}

/// `get_sigmas_exponential(n, sigma_min, sigma_max)`: float32 `linspace(log sigma_max, log sigma_min, n).exp()`.
pub fn exponential(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f64> {
    let mut sigs: Vec<f64> =
        linspace_f32(sigma_max.ln() as f32, sigma_min.ln() as f32, n).into_iter().map(|l| f64::from(l).exp()).collect();
    sigs.push(0.0);
    sigs
}

/// `simple_scheduler`: `sigmas[-(1 + int(x * len / steps))]` for x in 0..steps, then 0.
fn simple(model: &ModelSigmas, steps: usize) -> Vec<f64> {
    let n = model.len();
    let ss = n as f64 / steps as f64;
    let mut sigs: Vec<f64> = (0..steps)
        .map(|x| {
            // int(x * ss) truncates; x * ss < n for x < steps.
            let back = (x as f64 * ss) as usize;
            f64::from(model.sigmas[n - 1 - back.min(n - 1)])
        })
        .collect();
    sigs.push(0.0);
    sigs
}

/// `ddim_scheduler`.
fn ddim_uniform(model: &ModelSigmas, steps: usize) -> Vec<f64> {
    let n = model.len();
    let mut steps = steps;
    let mut sigs = Vec::new();
    if f64::from(model.sigmas[1]).abs() <= 1e-5 {
        steps += 1;
    } else {
        sigs.push(0.0);
    }
    let ss = (n / steps).max(1);
    sigs.extend((1..n).step_by(ss).map(|x| f64::from(model.sigmas[x])));
    sigs.reverse();
    sigs
}

/// `beta_scheduler(model_sampling, steps, alpha, beta)`: `ts = 1 - numpy.linspace(0, 1, steps, endpoint=False)`,
/// `rint(scipy.stats.beta.ppf(ts, alpha, beta) * (n - 1))`, the model sigma at each timestep but repeats, then 0.
fn beta(model: &ModelSigmas, steps: usize, a: f64, b: f64) -> Vec<f64> {
    let total = (model.len() - 1) as f64;
    // numpy's linspace without the endpoint: i * (1 / steps).
    let step = 1.0 / steps as f64;
    let mut sigs = Vec::with_capacity(steps + 1);
    let mut last = None;
    for i in 0..steps {
        let q = 1.0 - i as f64 * step;
        // numpy.rint: halves to even (ppf(0.5) of the symmetric default is exactly 0.5: t = 499.5 -> 500).
        let t = (beta_ppf(q, a, b) * total).round_ties_even();
        if last != Some(t) {
            sigs.push(f64::from(model.sigmas[t as usize]));
        }
        last = Some(t);
    }
    sigs.push(0.0);
    sigs
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, 9 terms; about 1e-15 relative).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 - x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut sum = C[0];
    for (k, c) in C.iter().enumerate().skip(1) {
        sum += c / (x + k as f64);
    }
    let t = x + G + 0.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The continued fraction of the regularised incomplete beta function (modified Lentz).
fn beta_cf(x: f64, a: f64, b: f64) -> f64 {
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 / off_zero(1.0 - qab * x / qap);
    let mut h = d;
    for m in 1..=300 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        // The even and the odd term of step m.
        let del;
        (c, d, del) = lentz_step(m * (b - m) * x / ((qam + m2) * (a + m2)), c, d);
        h *= del;
        let del;
        (c, d, del) = lentz_step(-(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)), c, d);
        h *= del;
        if (del - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// `v`, or a tiny number where it is (nearly) 0, as Lentz's method keeps its `c` and `d`.
fn off_zero(v: f64) -> f64 {
    const TINY: f64 = 1e-300;
    if v.abs() < TINY { TINY } else { v }
}

/// One modified-Lentz update with the term `aa`: the new `c` and `d` and the factor `d c` the fraction takes.
fn lentz_step(aa: f64, c: f64, d: f64) -> (f64, f64, f64) {
    let d = 1.0 / off_zero(1.0 + aa * d);
    let c = off_zero(1.0 + aa / c);
    (c, d, d * c)
}

/// The Beta(a, b) distribution function (the regularised incomplete beta function `I_x(a, b)`).
fn beta_cdf(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_cf(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_cf(1.0 - x, b, a) / b
    }
}

/// `scipy.stats.beta.ppf(q, a, b)`: the inverse of [`beta_cdf`], by bisection to the last bit. The median of a
/// symmetric distribution is exactly 0.5, as scipy's.
fn beta_ppf(q: f64, a: f64, b: f64) -> f64 {
    if q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return 1.0;
    }
    if a == b && q == 0.5 {
        return 0.5;
    }
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if beta_cdf(mid, a, b) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// `linear_quadratic_schedule(model_sampling, steps, threshold_noise)` (linear_steps = steps // 2), in Python's
/// float64 in ComfyUI's order of operations, then `torch.FloatTensor(schedule) * sigma_max` in float32.
fn linear_quadratic(model: &ModelSigmas, steps: usize, threshold_noise: f64) -> Vec<f64> {
    let schedule: Vec<f64> = if steps == 1 {
        vec![1.0, 0.0]
    } else {
        let linear_steps = steps / 2;
        let ls = linear_steps as f64;
        let mut s: Vec<f64> = (0..linear_steps).map(|i| i as f64 * threshold_noise / ls).collect();
        let threshold_noise_step_diff = ls - threshold_noise * steps as f64;
        let quadratic_steps = (steps - linear_steps) as f64;
        let quadratic_coef = threshold_noise_step_diff / (ls * quadratic_steps.powi(2));
        let linear_coef = threshold_noise / ls - 2.0 * threshold_noise_step_diff / quadratic_steps.powi(2);
        let constant = quadratic_coef * ls.powi(2);
        s.extend((linear_steps..steps).map(|i| {
            let i = i as f64;
            quadratic_coef * i.powi(2) + linear_coef * i + constant
        }));
        s.push(1.0);
        s.into_iter().map(|x| 1.0 - x).collect()
    };
    let sigma_max = model.sigmas[model.len() - 1];
    // float32 tensor times the float32 sigma_max: one float32 rounding of each.
    schedule.into_iter().map(|x| f64::from(x as f32 * sigma_max)).collect()
}

/// `kl_optimal_scheduler(n, sigma_min, sigma_max)` (n >= 2), in ComfyUI's float32: `adj = arange(n) / (n - 1)`,
/// `adj * atan(sigma_min) + (1 - adj) * atan(sigma_max)` (the Python float atans rounded to float32), `tan`, then 0.
fn kl_optimal(n: usize, sigma_min: f64, sigma_max: f64) -> Vec<f64> {
    let (lo, hi) = (sigma_min.atan() as f32, sigma_max.atan() as f32);
    let div = (n - 1) as f32;
    let mut sigs: Vec<f64> = (0..n)
        .map(|i| {
            let adj = i as f32 / div;
            f64::from(adj * lo + (1.0 - adj) * hi).tan()
        })
        .collect();
    sigs.push(0.0);
    sigs
}

/// ComfyUI's `KSampler(...).sigmas`: `KSampler.set_steps(steps, denoise)` over `KSampler.calculate_sigmas`.
///
/// - `denoise > 0.9999`: the full schedule of `steps` steps.
/// - `0 < denoise <= 0.9999`: the schedule of `int(steps / denoise)` steps, of which the last `steps + 1` sigmas are
///   kept (all of them when it is shorter).
/// - `denoise == 0`: an empty schedule (ComfyUI's KSampler then returns the input latent unchanged).
/// - `discard_penultimate` (true for ComfyUI's `dpm_2`, `dpm_2_ancestral`, `uni_pc`, `uni_pc_bh2`; see
///   `Sampler::discards_penultimate_sigma` in [`crate::sampling::samplers`]): each schedule is computed for one step
///   more and its second-to-last sigma dropped.
///
/// Errors: `steps == 0`, `denoise` outside `[0, 1]` or NaN, more than [`MAX_SCHEDULE_STEPS`] steps.
pub fn ksampler_sigmas(
    model: &ModelSigmas,
    scheduler: Scheduler,
    steps: usize,
    denoise: f64,
    discard_penultimate: bool,
) -> Result<Vec<f64>, ScheduleError> {
    if steps == 0 {
        return Err(ScheduleError::ZeroSteps);
    }
    if !(0.0..=1.0).contains(&denoise) {
        return Err(ScheduleError::BadDenoise(denoise));
    }
    let calculate = |steps: usize| -> Result<Vec<f64>, ScheduleError> {
        if discard_penultimate {
            let mut s = scheduler.sigmas(model, steps.checked_add(1).ok_or(ScheduleError::TooManySteps(steps))?)?;
            if s.len() >= 2 {
                s.remove(s.len() - 2);
            }
            Ok(s)
        } else {
            scheduler.sigmas(model, steps)
        }
    };
    if denoise > 0.9999 {
        return calculate(steps);
    }
    if denoise <= 0.0 {
        return Ok(Vec::new());
    }
    let total = steps as f64 / denoise;
    if total > MAX_SCHEDULE_STEPS as f64 {
        return Err(ScheduleError::TooManySteps(total as usize));
    }
    let sigmas = calculate(total as usize)?;
    let keep = (steps + 1).min(sigmas.len());
    Ok(sigmas[sigmas.len() - keep..].to_vec())
}
