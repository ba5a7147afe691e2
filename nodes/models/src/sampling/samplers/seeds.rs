//! SEEDS (Gonzalez et al. 2023, "SEEDS: Exponential SDE Solvers for Fast High-Quality Sampling from Diffusion
//! Models", arXiv 2305.14267): ComfyUI's `sample_seeds_2` and `sample_seeds_3` (`comfy/k_diffusion/sampling.py` @
//! Comfy-Org/ComfyUI a125cd84b054a57729b5eecab930ca9408719832), VP data prediction, eta 1 and s_noise 1 as KSampler
//! runs them. Each step but the last (which returns the denoised latent) takes 2 (3) model calls, at sigmas between
//! `sigma` and `sigma_next` placed by `lerp` in half-log-SNR `lambda = -log sigma`, and 2 (3) noise draws, one per
//! sub-interval, from the KSampler's seed + 1 stream (ComfyUI's `default_noise_sampler`). Written as ComfyUI writes
//! them, `alpha = sigma * exp(lambda)` (1 up to rounding for eps/v models) included.

use super::{Denoiser, Job, Noise, Run, SampleError, Sampled, SamplerHooks, Step, draw};

/// `torch.lerp(start, end, weight)` for scalars, as ATen computes it.
fn lerp(start: f64, end: f64, weight: f64) -> f64 {
    if weight.abs() < 0.5 { start + weight * (end - start) } else { end - (end - start) * (1.0 - weight) }
}

/// `ei_h_phi_1(h)`: `h phi_1(h) = expm1(h)`.
fn phi_1(h: f64) -> f64 {
    h.exp_m1()
}

/// `ei_h_phi_2(h)`: `h phi_2(h) = (expm1(h) - h) / h`.
fn phi_2(h: f64) -> f64 {
    (h.exp_m1() - h) / h
}

/// The SDE noise SEEDS carries across a step's sub-intervals: a draw for the first, then for each next one the
/// previous noise decayed by `exp(sf)` plus a fresh draw times `sqrt(-expm1(2 sf))`, `sf = (r_prev - r) h eta`.
struct SdeNoise<'a> {
    noise: Noise<'a>,
    len: usize,
    value: Vec<f64>,
}

impl SdeNoise<'_> {
    fn on(&self) -> bool {
        self.noise.eta > 0.0 && self.noise.s_noise > 0.0
    }

    /// The first sub-interval's noise: `sqrt(-expm1(-2 r h eta)) noise(sigma, sigma_1)`.
    fn first(&mut self, r: f64, h: f64, sigma: f64, sigma_1: f64) {
        let k = (-(-2.0 * r * h * self.noise.eta).exp_m1()).sqrt();
        let z = draw(self.noise.source, sigma, sigma_1, self.len);
        self.value = z.iter().map(|&zv| k * f64::from(zv)).collect();
    }

    /// The next sub-interval's, `segment_factor` being `(r_prev - r) h eta`.
    fn next(&mut self, segment_factor: f64, sigma_a: f64, sigma_b: f64) {
        let (decay, k) = (segment_factor.exp(), (-(segment_factor * 2.0).exp_m1()).sqrt());
        let z = draw(self.noise.source, sigma_a, sigma_b, self.len);
        for (v, &zv) in self.value.iter_mut().zip(&z) {
            *v = *v * decay + k * f64::from(zv);
        }
    }

    /// Adds `noise * sigma * s_noise` to `x`.
    fn add_to(&self, x: &mut [f64], sigma: f64) {
        for (xv, &nv) in x.iter_mut().zip(&self.value) {
            *xv += nv * sigma * self.noise.s_noise;
        }
    }
}

/// The f32 latent of f64 values.
fn rounded(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// A SEEDS step's times: `lambda = -log sigma` at its ends, `h` between them and `h_eta = h (eta + 1)`.
struct Span {
    s: f64,
    lambda_s: f64,
    lambda_t: f64,
    h: f64,
    eta: f64,
    h_eta: f64,
}

impl Span {
    fn new(s: f64, s_next: f64, eta: f64) -> Span {
        let (lambda_s, lambda_t) = (-s.ln(), -s_next.ln());
        let h = lambda_t - lambda_s;
        Span { s, lambda_s, lambda_t, h, eta, h_eta: h * (eta + 1.0) }
    }

    /// The sigma `r` of the way in lambda (`torch.lerp`) and its alpha, `sigma exp(lambda)`.
    fn at(&self, r: f64) -> (f64, f64) {
        let lambda = lerp(self.lambda_s, self.lambda_t, r);
        let sigma = (-lambda).exp();
        (sigma, sigma * lambda.exp())
    }
}

impl SdeNoise<'_> {
    /// A stage's latent at `to = (sigma_r, r)`, from the step's start `x` and the denoised mix `mix` (f64 per
    /// element, its alpha included): `sigma_r / sigma exp(-r h eta) x - mix`, plus the noise carried on from
    /// `from` (the last stage's `(sigma, r)`; none for the first stage).
    fn stage(
        &mut self,
        span: &Span,
        x: &[f32],
        from: Option<(f64, f64)>,
        to: (f64, f64),
        mix: impl Fn(usize) -> f64,
    ) -> Vec<f64> {
        let (sigma_r, r) = to;
        let a = sigma_r / span.s * (-r * span.h * span.eta).exp();
        let mut out: Vec<f64> = (0..x.len()).map(|j| a * f64::from(x[j]) - mix(j)).collect();
        if self.on() {
            match from {
                None => self.first(r, span.h, span.s, sigma_r),
                Some((sigma_from, r_from)) => self.next((r_from - r) * span.h * span.eta, sigma_from, sigma_r),
            }
            self.add_to(&mut out, sigma_r);
        }
        out
    }
}

/// A SEEDS sampler's stages after the first: given the step, its start latent, its times, the noise and the first
/// stage's `(sigma, denoised)`, the latent at `sigma_next` (f64).
type Later<'u, D, H> = dyn FnMut(
        &mut Run<'_, D, H>,
        &Step,
        &[f32],
        &Span,
        &mut SdeNoise<'_>,
        (f64, Vec<f32>),
    ) -> Result<Vec<f64>, SampleError<<D as Denoiser>::Error>>
    + 'u;

/// The loop both samplers share: the last step returns the denoised latent; the others take the first stage (the
/// latent `r_1` of the way, and the model there), then `later`.
fn seeds_steps<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
    r_1: f64,
    later: &mut Later<'_, D, H>,
) -> Sampled<D> {
    let eta = noise.eta;
    let mut sde = SdeNoise { noise, len: x.len(), value: Vec::new() };
    job.steps(x, &mut |run, st, x| {
        if st.s_next == 0.0 {
            x.copy_from_slice(&st.den);
            return Ok(());
        }
        let span = Span::new(st.s, st.s_next, eta);
        let (sigma_1, alpha_1) = span.at(r_1);
        let b = alpha_1 * phi_1(-r_1 * span.h_eta);
        let x2 = sde.stage(&span, x, None, (sigma_1, r_1), |j| b * f64::from(st.den[j]));
        let den2 = run.denoise(st.i, &rounded(&x2), sigma_1)?;
        let next = later(run, &st, x, &span, &mut sde, (sigma_1, den2))?;
        *x = rounded(&next);
        Ok(())
    })
}

/// `sample_seeds_2(eta, s_noise, r=0.5)`: SEEDS-2, the model called at `sigma` and at the sigma `r` of the way in
/// lambda; the step's denoised estimate is `lerp(denoised, denoised_2, 1 / (2 r))`.
pub fn sample_seeds_2<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
) -> Sampled<D> {
    const R: f64 = 0.5;
    let fac = 1.0 / (2.0 * R);
    seeds_steps(job, x, noise, R, &mut |_, st, x, span, sde, (sigma_1, den2)| {
        let b = st.s_next * span.lambda_t.exp() * phi_1(-span.h_eta);
        let mix = |j: usize| b * lerp(f64::from(st.den[j]), f64::from(den2[j]), fac);
        Ok(sde.stage(span, x, Some((sigma_1, R)), (st.s_next, 1.0), mix))
    })
}

/// `sample_seeds_3(eta, s_noise, r_1=1/3, r_2=2/3)`: SEEDS-3, the model called at `sigma` and at the sigmas `r_1`
/// and `r_2` of the way in lambda.
pub fn sample_seeds_3<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
) -> Sampled<D> {
    const R_1: f64 = 1.0 / 3.0;
    const R_2: f64 = 2.0 / 3.0;
    seeds_steps(job, x, noise, R_1, &mut |run, st, x, span, sde, (sigma_1, den2)| {
        // Step 2
        let (sigma_2, alpha_2) = span.at(R_2);
        let a3_2 = R_2 / R_1 * phi_2(-R_2 * span.h_eta);
        let a3_1 = phi_1(-R_2 * span.h_eta) - a3_2;
        let mix = |j: usize| alpha_2 * (a3_1 * f64::from(st.den[j]) + a3_2 * f64::from(den2[j]));
        let x3 = sde.stage(span, x, Some((sigma_1, R_1)), (sigma_2, R_2), mix);
        let den3 = run.denoise(st.i, &rounded(&x3), sigma_2)?;

        // Step 3
        let b3 = phi_2(-span.h_eta) / R_2;
        let b1 = phi_1(-span.h_eta) - b3;
        let alpha_t = st.s_next * span.lambda_t.exp();
        let mix = |j: usize| alpha_t * (b1 * f64::from(st.den[j]) + b3 * f64::from(den3[j]));
        Ok(sde.stage(span, x, Some((sigma_2, R_2)), (st.s_next, 1.0), mix))
    })
}
