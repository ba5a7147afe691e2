//! Linear multistep samplers on the sigma axis, one model call per step, each step a weighted sum of the current
//! and up to three earlier slopes `d = (x - denoised) / sigma`: `sample_lms` (k-diffusion 0.1.1's, as ComfyUI's),
//! and ComfyUI's `sample_ipndm`, `sample_ipndm_v` and `sample_deis` (from zju-pi/diff-sampler), all of
//! `comfy/k_diffusion/sampling.py` and `comfy/k_diffusion/deis.py` @ Comfy-Org/ComfyUI
//! a125cd84b054a57729b5eecab930ca9408719832.
//!
//! ComfyUI's callbacks of ipndm, ipndm_v and deis pass the sampler's starting latent as `x` at every step (they
//! report `x`, not `x_cur`); here [`super::StepInfo::x`] is the step's own latent, as for every other sampler.

use super::{Denoiser, Job, Sampled, SamplerHooks};
use crate::sampling::schedulers::linspace_f64;

/// The slope `(x - denoised) / sigma`, in f64.
fn slope(x: &[f32], den: &[f32], sigma: f64) -> Vec<f64> {
    x.iter().zip(den).map(|(&xv, &dv)| (f64::from(xv) - f64::from(dv)) / sigma).collect()
}

/// `x + sum_k w_k d_k`, rounded to f32 (the current slope first, then older ones, newest first).
fn combine(x: &mut [f32], terms: &[(f64, &Vec<f64>)]) {
    for (j, xv) in x.iter_mut().enumerate() {
        let step: f64 = terms.iter().map(|(w, d)| w * d[j]).sum();
        *xv = (f64::from(*xv) + step) as f32;
    }
}

/// Keeps the last `cap` slopes, oldest first.
fn push(history: &mut Vec<Vec<f64>>, d: Vec<f64>, cap: usize) {
    if history.len() == cap {
        history.remove(0);
    }
    history.push(d);
}

/// `linear_multistep_coeff(order, t, i, j)`: the integral over `[t_i, t_{i+1}]` of the Lagrange basis polynomial
/// through `t_i, t_{i-1}, ...` that is 1 at `t_{i-j}`. k-diffusion integrates with `scipy.integrate.quad`, exact for
/// these polynomials (degree 3 at most) up to rounding; so is the 3-point Gauss-Legendre rule here.
fn lms_coeff(order: usize, t: &[f64], i: usize, j: usize) -> f64 {
    let f = |tau: f64| {
        let mut prod = 1.0;
        for k in 0..order {
            if k != j {
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k]);
            }
        }
        prod
    };
    let (a, b) = (t[i], t[i + 1]);
    let (mid, half) = ((a + b) / 2.0, (b - a) / 2.0);
    let node = (3.0f64 / 5.0).sqrt();
    half * (5.0 / 9.0 * f(mid - half * node) + 8.0 / 9.0 * f(mid) + 5.0 / 9.0 * f(mid + half * node))
}

/// `sample_lms(order=4)`: Adams-Bashforth on the sigma axis with the exact weights of the actual sigmas (order
/// `min(i + 1, 4)`); the last step lands on the denoised latent.
pub fn sample_lms<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(job: Job<'_, D, H>, x: Vec<f32>) -> Sampled<D> {
    const ORDER: usize = 4;
    let sigmas = job.sigmas;
    let mut ds: Vec<Vec<f64>> = Vec::new();
    job.steps(x, &mut |_, st, x| {
        push(&mut ds, slope(x, &st.den, st.s), ORDER);
        if st.s_next == 0.0 {
            x.copy_from_slice(&st.den);
            return Ok(());
        }
        let order = (st.i + 1).min(ORDER);
        let terms: Vec<(f64, &Vec<f64>)> =
            (0..order).map(|j| (lms_coeff(order, sigmas, st.i, j), &ds[ds.len() - 1 - j])).collect();
        combine(x, &terms);
        Ok(())
    })
}

/// `sample_ipndm(max_order=4)`: fixed Adams-Bashforth weights (orders 1 to 4 as history builds up); the last step
/// lands on the denoised latent.
pub fn sample_ipndm<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(job: Job<'_, D, H>, x: Vec<f32>) -> Sampled<D> {
    const MAX_ORDER: usize = 4;
    let mut buffer: Vec<Vec<f64>> = Vec::new();
    job.steps(x, &mut |_, st, x| {
        let d = slope(x, &st.den, st.s);
        let order = MAX_ORDER.min(st.i + 1);
        let dt = st.s_next - st.s;
        let b = |k: usize| &buffer[buffer.len() - k];
        if st.s_next == 0.0 {
            x.copy_from_slice(&st.den);
        } else {
            let terms: Vec<(f64, &Vec<f64>)> = match order {
                1 => vec![(dt, &d)],
                2 => vec![(dt * 3.0 / 2.0, &d), (-dt / 2.0, b(1))],
                3 => vec![(dt * 23.0 / 12.0, &d), (-dt * 16.0 / 12.0, b(1)), (dt * 5.0 / 12.0, b(2))],
                _ => vec![
                    (dt * 55.0 / 24.0, &d),
                    (-dt * 59.0 / 24.0, b(1)),
                    (dt * 37.0 / 24.0, b(2)),
                    (-dt * 9.0 / 24.0, b(3)),
                ],
            };
            combine(x, &terms);
        }
        push(&mut buffer, d, MAX_ORDER - 1);
        Ok(())
    })
}

/// `sample_ipndm_v(max_order=4)`: variable-step Adams-Bashforth weights from the actual sigma spacings; the last
/// step lands on the denoised latent.
pub fn sample_ipndm_v<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(job: Job<'_, D, H>, x: Vec<f32>) -> Sampled<D> {
    const MAX_ORDER: usize = 4;
    let t = job.sigmas;
    let mut buffer: Vec<Vec<f64>> = Vec::new();
    job.steps(x, &mut |_, st, x| {
        let i = st.i;
        let d = slope(x, &st.den, st.s);
        let order = MAX_ORDER.min(i + 1);
        let (t_cur, t_next) = (st.s, st.s_next);
        let b = |k: usize| &buffer[buffer.len() - k];
        if t_next == 0.0 {
            x.copy_from_slice(&st.den);
        } else {
            let h_n = t_next - t_cur;
            let terms: Vec<(f64, &Vec<f64>)> = match order {
                1 => vec![(h_n, &d)],
                2 => {
                    let h_n_1 = t_cur - t[i - 1];
                    let coeff1 = (2.0 + (h_n / h_n_1)) / 2.0;
                    let coeff2 = -(h_n / h_n_1) / 2.0;
                    vec![(h_n * coeff1, &d), (h_n * coeff2, b(1))]
                }
                3 => {
                    let h_n_1 = t_cur - t[i - 1];
                    let h_n_2 = t[i - 1] - t[i - 2];
                    let temp =
                        (1.0 - h_n / (3.0 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2.0;
                    let coeff1 = (2.0 + (h_n / h_n_1)) / 2.0 + temp;
                    let coeff2 = -(h_n / h_n_1) / 2.0 - (1.0 + h_n_1 / h_n_2) * temp;
                    let coeff3 = temp * h_n_1 / h_n_2;
                    vec![(h_n * coeff1, &d), (h_n * coeff2, b(1)), (h_n * coeff3, b(2))]
                }
                _ => {
                    let h_n_1 = t_cur - t[i - 1];
                    let h_n_2 = t[i - 1] - t[i - 2];
                    let h_n_3 = t[i - 2] - t[i - 3];
                    let temp1 =
                        (1.0 - h_n / (3.0 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2.0;
                    let temp2 = ((1.0 - h_n / (3.0 * (h_n + h_n_1))) / 2.0
                        + (1.0 - h_n / (2.0 * (h_n + h_n_1))) * h_n / (6.0 * (h_n + h_n_1 + h_n_2)))
                        * (h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2))
                        / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3));
                    let r = h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3));
                    let coeff1 = (2.0 + (h_n / h_n_1)) / 2.0 + temp1 + temp2;
                    let coeff2 =
                        -(h_n / h_n_1) / 2.0 - (1.0 + h_n_1 / h_n_2) * temp1 - (1.0 + (h_n_1 / h_n_2) + r) * temp2;
                    let coeff3 = temp1 * h_n_1 / h_n_2 + ((h_n_1 / h_n_2) + r * (1.0 + h_n_2 / h_n_3)) * temp2;
                    let coeff4 = -temp2 * r * h_n_1 / h_n_2;
                    vec![(h_n * coeff1, &d), (h_n * coeff2, b(1)), (h_n * coeff3, b(2)), (h_n * coeff4, b(3))]
                }
            };
            combine(x, &terms);
        }
        push(&mut buffer, d, MAX_ORDER - 1);
        Ok(())
    })
}

/// `deis.get_deis_coeff_list(t_steps, max_order, N=10000, deis_mode='tab')`: for each step of order 2 or more, the
/// weights of the current and earlier slopes, integrals in DEIS time of the VP schedule's integrand times the
/// Lagrange basis polynomials, as ComfyUI computes them (a sum over a 10000-point `linspace` times `dt / 10000`).
/// `edm2t` maps sigmas to DEIS time with its fixed VP schedule (sigma 0.002 to 80, epsilon 1e-3).
fn deis_coefficients(sigmas: &[f64], max_order: usize) -> Vec<Vec<f64>> {
    const N: usize = 10_000;
    // edm2t: log(0.002^2 + 1) is taken in float32 (a float32 tensor), log(80^2 + 1) in float64 (an int64 one).
    let (eps_s, sigma_max) = (1e-3f64, 80.0f64);
    let small = f64::from(0.002f32) * f64::from(0.002f32);
    let small = f64::from((f64::from(small as f32 + 1.0f32)).ln() as f32);
    let small_over_eps = f64::from((small / eps_s) as f32);
    let big = (sigma_max * sigma_max + 1.0).ln();
    let beta_d = 2.0 * (small_over_eps - big) / (eps_s - 1.0);
    let beta_min = big - 0.5 * beta_d;
    let t_steps: Vec<f64> = sigmas
        .iter()
        .map(|&s| ((beta_min * beta_min + 2.0 * beta_d * (s * s + 1.0).ln()).sqrt() - beta_min) / beta_d)
        .collect();
    let (beta_0, beta_1) = (beta_min, beta_d + beta_min);
    // -0.5 d(log alpha)/dtau / sqrt(alpha (1 - alpha)), alpha = exp(-tau^2 (b1 - b0) / 2 - tau b0).
    let integrand = |tau: f64| {
        let alpha = (-0.5 * tau * tau * (beta_1 - beta_0) - tau * beta_0).exp();
        let dlog = -(tau * (beta_1 - beta_0) + beta_0);
        -0.5 * dlog / (alpha * (1.0 - alpha)).sqrt()
    };
    (0..t_steps.len() - 1)
        .map(|i| {
            let order = (i + 1).min(max_order);
            if order == 1 {
                return vec![];
            }
            let (t_cur, t_next) = (t_steps[i], t_steps[i + 1]);
            let taus = linspace_f64(t_cur, t_next, N);
            let dtau = (t_next - t_cur) / N as f64;
            let prev: Vec<f64> = (0..order).map(|k| t_steps[i - k]).collect();
            let weights: Vec<f64> = taus.iter().map(|&tau| integrand(tau)).collect();
            (0..order)
                .map(|j| {
                    let sum: f64 = taus
                        .iter()
                        .zip(&weights)
                        .map(|(&tau, w)| {
                            let mut poly = 1.0;
                            for (k, &pk) in prev.iter().enumerate() {
                                if k != j {
                                    poly *= (tau - pk) / (prev[j] - pk);
                                }
                            }
                            w * poly
                        })
                        .sum();
                    sum * dtau
                })
                .collect()
        })
        .collect()
}

/// `sample_deis(max_order=3, deis_mode='tab')`: DEIS's exponential-integrator weights of the current and earlier
/// slopes (order `min(i + 1, 3)`); a step to sigma 0 is an Euler step.
pub fn sample_deis<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(job: Job<'_, D, H>, x: Vec<f32>) -> Sampled<D> {
    const MAX_ORDER: usize = 3;
    let coeffs = if job.sigmas.len() >= 2 { deis_coefficients(job.sigmas, MAX_ORDER) } else { vec![] };
    let mut buffer: Vec<Vec<f64>> = Vec::new();
    job.steps(x, &mut |_, st, x| {
        let d = slope(x, &st.den, st.s);
        let order = if st.s_next <= 0.0 { 1 } else { MAX_ORDER.min(st.i + 1) };
        let terms: Vec<(f64, &Vec<f64>)> = if order == 1 {
            vec![(st.s_next - st.s, &d)]
        } else {
            let c = &coeffs[st.i];
            std::iter::once((c[0], &d)).chain((1..order).map(|k| (c[k], &buffer[buffer.len() - k]))).collect()
        };
        combine(x, &terms);
        push(&mut buffer, d, MAX_ORDER - 1);
        Ok(())
    })
}
