//! SEEDS (Gonzalez et al. 2023, "SEEDS: Exponential SDE Solvers for Fast High-Quality Sampling from Diffusion
//! Models", arXiv 2305.14267): ComfyUI's `sample_seeds_2` and `sample_seeds_3` (`comfy/k_diffusion/sampling.py` @
//! Comfy-Org/ComfyUI a125cd84b054a57729b5eecab930ca9408719832), VP data prediction, eta 1 and s_noise 1 as KSampler
//! runs them. Each step but the last (which returns the denoised latent) takes 2 (3) model calls, at sigmas between
//! `sigma` and `sigma_next` placed by `lerp` in half-log-SNR `lambda = -log sigma`, and 2 (3) noise draws, one per
//! sub-interval, from the KSampler's seed + 1 stream (ComfyUI's `default_noise_sampler`). Written as ComfyUI writes
//! them, `alpha = sigma * exp(lambda)` (1 up to rounding for eps/v models) included.

use super::{Denoiser, Job, Noise, Sampled, SamplerHooks, draw};

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

/// `sample_seeds_2(eta, s_noise, r=0.5)`: SEEDS-2, the model called at `sigma` and at the sigma `r` of the way in
/// lambda; the step's denoised estimate is `lerp(denoised, denoised_2, 1 / (2 r))`.
pub fn sample_seeds_2<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
) -> Sampled<D> {
    const R: f64 = 0.5;
    let eta = noise.eta;
    let mut sde = SdeNoise { noise, len: x.len(), value: Vec::new() };
    let fac = 1.0 / (2.0 * R);
    job.steps(x, &mut |run, st, x| {
        let (s, s_next) = (st.s, st.s_next);
        if s_next == 0.0 {
            x.copy_from_slice(&st.den);
            return Ok(());
        }
        let (lambda_s, lambda_t) = (-s.ln(), -s_next.ln());
        let h = lambda_t - lambda_s;
        let h_eta = h * (eta + 1.0);
        let lambda_s_1 = lerp(lambda_s, lambda_t, R);
        let sigma_s_1 = (-lambda_s_1).exp();
        let alpha_s_1 = sigma_s_1 * lambda_s_1.exp();
        let alpha_t = s_next * lambda_t.exp();

        // Step 1
        let (a, b) = (sigma_s_1 / s * (-R * h * eta).exp(), alpha_s_1 * phi_1(-R * h_eta));
        let mut x2: Vec<f64> = x.iter().zip(&st.den).map(|(&xv, &dv)| a * f64::from(xv) - b * f64::from(dv)).collect();
        if sde.on() {
            sde.first(R, h, s, sigma_s_1);
            sde.add_to(&mut x2, sigma_s_1);
        }
        let den2 = run.denoise(st.i, &rounded(&x2), sigma_s_1)?;

        // Step 2
        let (a, b) = (s_next / s * (-h * eta).exp(), alpha_t * phi_1(-h_eta));
        let mut next: Vec<f64> = (0..x.len())
            .map(|j| {
                let den_d = lerp(f64::from(st.den[j]), f64::from(den2[j]), fac);
                a * f64::from(x[j]) - b * den_d
            })
            .collect();
        if sde.on() {
            sde.next((R - 1.0) * h * eta, sigma_s_1, s_next);
            sde.add_to(&mut next, s_next);
        }
        *x = rounded(&next);
        Ok(())
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
    let eta = noise.eta;
    let mut sde = SdeNoise { noise, len: x.len(), value: Vec::new() };
    job.steps(x, &mut |run, st, x| {
        let (s, s_next) = (st.s, st.s_next);
        if s_next == 0.0 {
            x.copy_from_slice(&st.den);
            return Ok(());
        }
        let (lambda_s, lambda_t) = (-s.ln(), -s_next.ln());
        let h = lambda_t - lambda_s;
        let h_eta = h * (eta + 1.0);
        let (lambda_s_1, lambda_s_2) = (lerp(lambda_s, lambda_t, R_1), lerp(lambda_s, lambda_t, R_2));
        let (sigma_s_1, sigma_s_2) = ((-lambda_s_1).exp(), (-lambda_s_2).exp());
        let alpha_s_1 = sigma_s_1 * lambda_s_1.exp();
        let alpha_s_2 = sigma_s_2 * lambda_s_2.exp();
        let alpha_t = s_next * lambda_t.exp();

        // Step 1
        let (a, b) = (sigma_s_1 / s * (-R_1 * h * eta).exp(), alpha_s_1 * phi_1(-R_1 * h_eta));
        let mut x2: Vec<f64> = x.iter().zip(&st.den).map(|(&xv, &dv)| a * f64::from(xv) - b * f64::from(dv)).collect();
        if sde.on() {
            sde.first(R_1, h, s, sigma_s_1);
            sde.add_to(&mut x2, sigma_s_1);
        }
        let den2 = run.denoise(st.i, &rounded(&x2), sigma_s_1)?;

        // Step 2
        let a3_2 = R_2 / R_1 * phi_2(-R_2 * h_eta);
        let a3_1 = phi_1(-R_2 * h_eta) - a3_2;
        let a = sigma_s_2 / s * (-R_2 * h * eta).exp();
        let mut x3: Vec<f64> = (0..x.len())
            .map(|j| {
                let mix = a3_1 * f64::from(st.den[j]) + a3_2 * f64::from(den2[j]);
                a * f64::from(x[j]) - alpha_s_2 * mix
            })
            .collect();
        if sde.on() {
            sde.next((R_1 - R_2) * h * eta, sigma_s_1, sigma_s_2);
            sde.add_to(&mut x3, sigma_s_2);
        }
        let den3 = run.denoise(st.i, &rounded(&x3), sigma_s_2)?;

        // Step 3
        let b3 = phi_2(-h_eta) / R_2;
        let b1 = phi_1(-h_eta) - b3;
        let a = s_next / s * (-h * eta).exp();
        let mut next: Vec<f64> = (0..x.len())
            .map(|j| a * f64::from(x[j]) - alpha_t * (b1 * f64::from(st.den[j]) + b3 * f64::from(den3[j])))
            .collect();
        if sde.on() {
            sde.next((R_2 - 1.0) * h * eta, sigma_s_2, s_next);
            sde.add_to(&mut next, s_next);
        }
        *x = rounded(&next);
        Ok(())
    })
}
