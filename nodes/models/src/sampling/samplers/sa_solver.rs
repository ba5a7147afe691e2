//! SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion Models", arXiv
//! 2309.05019): ComfyUI's `sample_sa_solver` and `sample_sa_solver_pece` (`comfy/k_diffusion/sampling.py` and
//! `comfy/k_diffusion/sa_solver.py` @ Comfy-Org/ComfyUI a125cd84b054a57729b5eecab930ca9408719832) with KSampler's
//! defaults: predictor order 3, corrector order 4, s_noise 1, no simple order-2 scheme, and the default stochastic
//! interval (`tau = 1` for the sigmas between the model's `percent_to_sigma(0.8)` and `percent_to_sigma(0.2)`, else
//! 0, see [`super::Denoiser::percent_to_sigma`]). One model call a step (two with PECE: the corrected latent is
//! evaluated again); one noise draw for each predictor step whose target sigma lies in the interval, from the
//! KSampler's seed + 1 stream (ComfyUI's `default_noise_sampler`).
//!
//! The Adams coefficients integrate the Lagrange basis through the last denoised latents (at half-log-SNR times
//! `lambda = -log sigma`) against the exponential weight: the exponential integrals by ComfyUI's recursion, the
//! Lagrange integrals by solving the transposed Vandermonde system (partial pivoting, as LAPACK's `gesv` behind
//! `torch.linalg.solve`).

use super::{Denoiser, Job, Noise, Run, Sampled, SamplerHooks, Step, draw};
use crate::sampling::schedulers::ModelSigmas;

/// The predictor's and the corrector's orders (ComfyUI's defaults).
const PREDICTOR_ORDER: usize = 3;
const CORRECTOR_ORDER: usize = 4;

/// `compute_exponential_coeffs(s, t, order, tau)`: `(1 + tau^2)` times the integral of `exp((1 + tau^2) x) x^p`
/// from `s` to `t`, with `exp((1 + tau^2) t)` factored out, for `p` in `0..order`.
fn exponential_coeffs(s: f64, t: f64, order: usize, tau: f64) -> Vec<f64> {
    let tau_mul = 1.0 + tau * tau;
    let h = t - s;
    let decay = (-tau_mul * h).exp();
    let product: Vec<f64> = (0..order).map(|p| t.powi(p as i32) - s.powi(p as i32) * decay).collect();
    // log(p!) for p in 0..order, the log of torch's lgamma(p + 1).
    let log_factorial: Vec<f64> = (0..order).map(|p| ((1..=p).product::<usize>() as f64).ln()).collect();
    (0..order)
        .map(|i| {
            (0..=i)
                .map(|j| {
                    let mut c = log_factorial[i] - log_factorial[j];
                    if tau > 0.0 {
                        c -= (i - j) as f64 * tau_mul.ln();
                    }
                    let sign = if (i - j) % 2 == 0 { 1.0 } else { -1.0 };
                    c.exp() * sign * product[j]
                })
                .sum()
        })
        .collect()
}

/// Solves `a x = b` (n by n, row-major) by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for k in 0..n {
        let p = (k..n).fold(k, |best, r| if a[r][k].abs() > a[best][k].abs() { r } else { best });
        a.swap(k, p);
        b.swap(k, p);
        let (above, below) = a.split_at_mut(k + 1);
        let pivot = &above[k];
        for (r, row) in below.iter_mut().enumerate() {
            let f = row[k] / pivot[k];
            for (v, p) in row[k..].iter_mut().zip(&pivot[k..]) {
                *v -= f * p;
            }
            b[k + 1 + r] -= f * b[k];
        }
    }
    let mut x = vec![0.0; n];
    for k in (0..n).rev() {
        let tail: f64 = (k + 1..n).map(|c| a[k][c] * x[c]).sum();
        x[k] = (b[k] - tail) / a[k][k];
    }
    x
}

/// `compute_stochastic_adams_b_coeffs(sigma_next, curr_lambdas, lambda_s, lambda_t, tau)`: the weights of the
/// denoised latents at `lambdas` (oldest first) for a step from `lambda_s` to `lambda_t`.
fn adams_coeffs(sigma_next: f64, lambdas: &[f64], lambda_s: f64, lambda_t: f64, tau: f64) -> Vec<f64> {
    let n = lambdas.len();
    let integrals = exponential_coeffs(lambda_s, lambda_t, n, tau);
    // vander(lambdas, n, increasing=True).T: row p holds lambda_k^p.
    let vandermonde_t: Vec<Vec<f64>> = (0..n).map(|p| lambdas.iter().map(|l| l.powi(p as i32)).collect()).collect();
    let lagrange = solve(vandermonde_t, integrals);
    let alpha_t = sigma_next * lambda_t.exp();
    lagrange.iter().map(|v| alpha_t * v).collect()
}

/// `sample_sa_solver` (`pece` false) or `sample_sa_solver_pece`.
pub fn sample_sa_solver<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    noise: Noise<'_>,
    pece: bool,
) -> Sampled<D> {
    let Noise { source, s_noise, .. } = noise;
    let sigmas = job.sigmas;
    // ComfyUI's default tau_func: get_tau_interval_func(percent_to_sigma(0.2), percent_to_sigma(0.8), eta=1).
    let interval = |p: f64| job.denoiser.percent_to_sigma(p).unwrap_or_else(|| ModelSigmas::sd15().percent_to_sigma(p));
    let (start_sigma, end_sigma) = (interval(0.2), interval(0.8));
    let tau_of = |sigma: f64| if start_sigma >= sigma && sigma >= end_sigma { 1.0 } else { 0.0 };
    let lambdas: Vec<f64> = sigmas.iter().map(|s| -s.ln()).collect();
    let lower_order_to_end = sigmas.last() == Some(&0.0);
    let n = sigmas.len();

    // The corrected latent (x_pred, the predicted one, is what the steps carry and the model sees).
    let mut x_corr: Vec<f32> = Vec::new();
    let (mut h, mut tau_t) = (0.0f64, 0.0f64);
    let mut noise_term: Vec<f64> = Vec::new();
    let mut preds: Vec<Vec<f32>> = Vec::new();
    let mut update = |run: &mut Run<'_, D, H>, st: Step, x_pred: &mut Vec<f32>| {
        let i = st.i;
        preds.push(st.den);
        if preds.len() > PREDICTOR_ORDER.max(CORRECTOR_ORDER) {
            preds.remove(0);
        }
        let mut predictor_order = PREDICTOR_ORDER.min(preds.len());
        let mut corrector_order =
            if i == 0 || (st.s_next == 0.0 && !pece) { 0 } else { CORRECTOR_ORDER.min(preds.len()) };
        if lower_order_to_end {
            predictor_order = predictor_order.min(n - 2 - i);
            corrector_order = corrector_order.min(n - 1 - i);
        }

        // Corrector
        if corrector_order == 0 {
            x_corr = x_pred.clone();
        } else {
            let b = adams_coeffs(sigmas[i], &lambdas[i + 1 - corrector_order..=i], lambdas[i - 1], lambdas[i], tau_t);
            let used = &preds[preds.len() - corrector_order..];
            let ratio = sigmas[i] / sigmas[i - 1] * (-(tau_t * tau_t) * h).exp();
            let noisy = tau_t > 0.0 && s_noise > 0.0;
            let corrected: Vec<f32> = (0..x_corr.len())
                .map(|j| {
                    let res: f64 = used.iter().zip(&b).map(|(p, bk)| f64::from(p[j]) * bk).sum();
                    let mut v = ratio * f64::from(x_corr[j]) + res;
                    if noisy {
                        v += noise_term[j];
                    }
                    v as f32
                })
                .collect();
            x_corr = corrected;
            if pece {
                let den = run.denoise(i, &x_corr, sigmas[i])?;
                *preds.last_mut().expect("this step's") = den;
            }
        }

        // Predictor
        let den = preds.last().expect("this step's");
        if st.s_next == 0.0 {
            x_pred.copy_from_slice(den);
            return Ok(());
        }
        tau_t = tau_of(sigmas[i + 1]);
        let b = adams_coeffs(sigmas[i + 1], &lambdas[i + 1 - predictor_order..=i], lambdas[i], lambdas[i + 1], tau_t);
        let used = &preds[preds.len() - predictor_order..];
        h = lambdas[i + 1] - lambdas[i];
        let ratio = sigmas[i + 1] / sigmas[i] * (-(tau_t * tau_t) * h).exp();
        let mut next: Vec<f64> = (0..x_corr.len())
            .map(|j| {
                let res: f64 = used.iter().zip(&b).map(|(p, bk)| f64::from(p[j]) * bk).sum();
                ratio * f64::from(x_corr[j]) + res
            })
            .collect();
        if tau_t > 0.0 && s_noise > 0.0 {
            let z = draw(source, sigmas[i], sigmas[i + 1], x_corr.len());
            let spread = (-(-2.0 * (tau_t * tau_t) * h).exp_m1()).sqrt();
            noise_term = z.iter().map(|&zv| f64::from(zv) * sigmas[i + 1] * spread * s_noise).collect();
            for (v, nv) in next.iter_mut().zip(&noise_term) {
                *v += nv;
            }
        }
        for (xv, v) in x_pred.iter_mut().zip(next) {
            *xv = v as f32;
        }
        Ok(())
    };
    let x_pred = job.steps(x, &mut update)?;
    // ComfyUI returns the corrected latent: the prediction where the last step lands on sigma 0 (its "denoising
    // step" sets both), the latent at the last sigma but one where the schedule stops short of 0.
    Ok(if lower_order_to_end || x_corr.is_empty() { x_pred } else { x_corr })
}
