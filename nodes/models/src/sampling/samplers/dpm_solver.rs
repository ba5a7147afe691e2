//! DPM-Solver-fast and DPM-Solver adaptive (Lu et al. 2022): ComfyUI's `dpm_fast` (and, at the end,
//! `dpm_adaptive`), i.e. `ksampler("dpm_fast")` in `comfy/samplers.py`
//! calling k-diffusion's `sample_dpm_fast` / `DPMSolver.dpm_solver_fast` (`comfy/k_diffusion/sampling.py` @
//! Comfy-Org/ComfyUI a125cd84b054a57729b5eecab930ca9408719832, k-diffusion 0.1.1's with eta 0).
//!
//! Only the first sigma, the last positive one and the number of steps matter: with `n` steps (model calls), time
//! `t = -log sigma` is split evenly (`torch.linspace`) into `floor(n / 3) + 1` intervals, each taken by a
//! DPM-Solver step of order 3 but the last one or two (orders `3, ..., 3, 2, 1` when `n % 3 == 0`, else
//! `3, ..., 3, n % 3`), so the model is called `n` times at sigmas of its own. The result is the latent at the last
//! positive sigma (where ComfyUI stops; its final `inverse_noise_scaling` is the identity for eps/v models).
//! With eta 0 no noise is added (ComfyUI draws it and multiplies it by 0).
//!
//! The callback reports each solver step (fewer than `n`), with `total` the number of sigma steps, as ComfyUI's
//! KSampler callback does, and the step's own sigmas.

use super::{Denoiser, Job, Run, Sampled, SamplerHooks, StepInfo};
use crate::sampling::schedulers::linspace_f32;

/// The solver's orders for `nfe` model calls.
fn orders(nfe: usize) -> Vec<usize> {
    let m = nfe / 3 + 1;
    if nfe.is_multiple_of(3) {
        let mut o = vec![3; m - 2];
        o.extend([2, 1]);
        o
    } else {
        let mut o = vec![3; m - 1];
        o.push(nfe % 3);
        o
    }
}

/// `DPMSolver.sigma(t)`: `exp(-t)` of a float32 time, in float32.
fn sigma_of(t: f32) -> f32 {
    f64::from(-t).exp() as f32
}

/// `expm1` in float32.
fn expm1(v: f32) -> f32 {
    f64::from(v).exp_m1() as f32
}

/// `x - a * eps_0 - b * (eps_1 - eps_0)` per element (float32 scalars, as ComfyUI's), rounded to f32.
fn step(x: &[f32], eps0: &[f64], a: f32, diff: Option<(f32, &[f64])>) -> Vec<f32> {
    (0..x.len())
        .map(|j| {
            let mut v = f64::from(x[j]) - f64::from(a) * eps0[j];
            if let Some((b, e1)) = diff {
                v -= f64::from(b) * (e1[j] - eps0[j]);
            }
            v as f32
        })
        .collect()
}

/// What ComfyUI's `dpm_fast_function` and `dpm_adaptive_function` take from the sigmas: the number of steps and
/// `sigma_min`, the last sigma or, where that is 0, the one before it. `None` with one sigma (nothing to do).
fn solver_span(sigmas: &[f64]) -> Option<(usize, f64)> {
    let n = sigmas.len().checked_sub(1).filter(|&n| n > 0)?;
    let last = sigmas[n];
    Some((n, if last == 0.0 { sigmas[n - 1] } else { last }))
}

/// `sample_dpm_fast(sigma_min, sigma_max, n)` as ComfyUI's `dpm_fast` calls it: `sigma_max` the first sigma,
/// `sigma_min` the last (the one before it when the last is 0), `n` the number of steps. See the module
/// documentation.
pub fn sample_dpm_fast<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(job: Job<'_, D, H>, x: Vec<f32>) -> Sampled<D> {
    let sigmas = job.sigmas;
    let mut run = Run::new(job.denoiser, job.hooks, &x, sigmas)?;
    let Some((n, sigma_min)) = solver_span(sigmas) else { return Ok(x) };
    // ComfyUI's times are float64 (from the sigmas), its grid float32 (`torch.linspace`'s default dtype), so every
    // scalar of the solver is float32: computed so here (the latent updates stay in f64).
    let (t_start, t_end) = (-sigmas[0].ln(), -sigma_min.ln());
    let orders = orders(n);
    let ts = linspace_f32(t_start as f32, t_end as f32, orders.len() + 1);
    let mut x = x;
    for (i, &order) in orders.iter().enumerate() {
        let (t, t_next) = (ts[i], ts[i + 1]);
        // eps = (x - model(x, sigma(t))) / sigma(t).
        let eps_at = |run: &mut Run<'_, D, H>, x: &[f32], t: f32| -> Result<(Vec<f64>, Vec<f32>), _> {
            let sigma = f64::from(sigma_of(t));
            let den = run.denoise(i, x, sigma)?;
            Ok((x.iter().zip(&den).map(|(&xv, &dv)| (f64::from(xv) - f64::from(dv)) / sigma).collect(), den))
        };
        let (eps, den) = eps_at(&mut run, &x, t)?;
        run.report_info(&StepInfo {
            step: i,
            total: n,
            sigma: f64::from(sigma_of(t)),
            sigma_next: f64::from(sigma_of(t_next)),
            x: &x,
            denoised: &den,
        });
        let h = t_next - t;
        let s_next = sigma_of(t_next);
        x = match order {
            1 => step(&x, &eps, s_next * expm1(h), None),
            2 => {
                let r1 = 0.5f32;
                let s1 = t + r1 * h;
                let u1 = step(&x, &eps, sigma_of(s1) * expm1(r1 * h), None);
                let (eps_r1, _) = eps_at(&mut run, &u1, s1)?;
                step(&x, &eps, s_next * expm1(h), Some((s_next / (2.0 * r1) * expm1(h), &eps_r1)))
            }
            _ => {
                let (r1, r2) = ((1.0f64 / 3.0) as f32, (2.0f64 / 3.0) as f32);
                let (s1, s2) = (t + r1 * h, t + r2 * h);
                let u1 = step(&x, &eps, sigma_of(s1) * expm1(r1 * h), None);
                let (eps_r1, _) = eps_at(&mut run, &u1, s1)?;
                // (r2 / r1) is a Python float, 2.
                let b2 = sigma_of(s2) * (2.0f64 / 3.0 / (1.0 / 3.0)) as f32 * (expm1(r2 * h) / (r2 * h) - 1.0);
                let u2 = step(&x, &eps, sigma_of(s2) * expm1(r2 * h), Some((b2, &eps_r1)));
                let (eps_r2, _) = eps_at(&mut run, &u2, s2)?;
                let b3 = s_next / r2 * (expm1(h) / h - 1.0);
                step(&x, &eps, s_next * expm1(h), Some((b3, &eps_r2)))
            }
        };
    }
    Ok(x)
}

/// `PIDStepSizeController` with `sample_dpm_adaptive`'s defaults (pcoeff 0, icoeff 1, dcoeff 0, order 3,
/// accept_safety 0.81, eps 1e-8): the step grows or shrinks by `1 + atan(f - 1)`, `f` the cube root of the inverse
/// error (the P and D terms are 0, their powers 1), and is accepted when that is at least 0.81.
struct StepControl {
    h: f64,
    b: [f64; 3],
    errs: Option<[f64; 3]>,
}

impl StepControl {
    fn new(h: f64) -> StepControl {
        let (pcoeff, icoeff, dcoeff, order) = (0.0, 1.0, 0.0, 3.0);
        let b = [(pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2.0 * dcoeff) / order, dcoeff / order];
        StepControl { h, b, errs: None }
    }

    /// `propose_step(error)`: scales `h`, says whether the step is accepted.
    fn propose(&mut self, error: f64) -> bool {
        const ACCEPT_SAFETY: f64 = 0.81;
        let inv_error = 1.0 / (error + 1e-8);
        let errs = self.errs.get_or_insert([inv_error; 3]);
        errs[0] = inv_error;
        let factor = errs[0].powf(self.b[0]) * errs[1].powf(self.b[1]) * errs[2].powf(self.b[2]);
        let factor = 1.0 + (factor - 1.0).atan();
        let accept = factor >= ACCEPT_SAFETY;
        if accept {
            errs[2] = errs[1];
            errs[1] = errs[0];
        }
        self.h *= factor;
        accept
    }
}

/// `x - a eps_0 - b (eps_1 - eps_0)` per element in f64.
fn step_f64(x: &[f32], eps0: &[f64], a: f64, diff: Option<(f64, &[f64])>) -> Vec<f64> {
    (0..x.len())
        .map(|j| {
            let mut v = f64::from(x[j]) - a * eps0[j];
            if let Some((b, e1)) = diff {
                v -= b * (e1[j] - eps0[j]);
            }
            v
        })
        .collect()
}

fn rounded(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// `sample_dpm_adaptive(sigma_min, sigma_max)` as ComfyUI's `dpm_adaptive` calls it (`ksampler("dpm_adaptive")` in
/// `comfy/samplers.py` @ Comfy-Org/ComfyUI a125cd84b054a57729b5eecab930ca9408719832, KSampler's defaults: order 3,
/// rtol 0.05, atol 0.0078, h_init 0.05, eta 0): `DPMSolver.dpm_solver_adaptive` from `t = -log sigmas[0]` to `-log`
/// of the last positive sigma, which only those two sigmas decide. Each try of a step from `s` to `t = min(t_end, s +
/// h)` takes 3 model calls (DPM-Solver-2 with `r1 = 1/3` and DPM-Solver-3, sharing two of them); the step is
/// accepted or retried smaller by the PID controller on the scaled norm of their difference, until `s` is within
/// 1e-5 of `t_end`. The times are f64, as the fixture's sigmas (ComfyUI's are the sigmas' dtype); with eta 0 no
/// noise is added (ComfyUI draws it and multiplies it by 0).
///
/// The callback fires after every try, accepted or not, as ComfyUI's does: `x` the latent after it, `denoised` the
/// estimate at its start, `sigma` its start's and `sigma_next` its end's; `total` is the number of sigma steps.
pub fn sample_dpm_adaptive<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
) -> Sampled<D> {
    // torch.tensor(rtol), torch.tensor(atol): float32 values.
    const RTOL: f64 = 0.05f32 as f64;
    const ATOL: f64 = 0.0078f32 as f64;
    const H_INIT: f64 = 0.05;
    let (r1, r2) = (1.0f64 / 3.0, 2.0f64 / 3.0);
    let sigmas = job.sigmas;
    let mut run = Run::new(job.denoiser, job.hooks, &x, sigmas)?;
    let Some((n, sigma_min)) = solver_span(sigmas) else { return Ok(x) };
    let sigma = |t: f64| (-t).exp();
    let (t_start, t_end) = (-sigmas[0].ln(), -sigma_min.ln());
    let forward = t_end > t_start;
    let mut pid = StepControl::new(if forward { H_INIT } else { -H_INIT });
    let (mut s, mut x) = (t_start, x);
    let mut x_prev: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
    let mut tries = 0;
    while if forward { s < t_end - 1e-5 } else { s > t_end + 1e-5 } {
        let t = if forward { t_end.min(s + pid.h) } else { t_end.max(s + pid.h) };
        // eps = (x - model(x, sigma(t))) / sigma(t).
        let mut eps_at = |x: &[f32], t: f64| -> Result<(Vec<f64>, Vec<f32>), _> {
            let sig = sigma(t);
            let den = run.denoise(tries, x, sig)?;
            Ok((x.iter().zip(&den).map(|(&xv, &dv)| (f64::from(xv) - f64::from(dv)) / sig).collect(), den))
        };
        let (eps, den) = eps_at(&x, s)?;
        let h = t - s;
        let s1 = s + r1 * h;
        let u1 = step_f64(&x, &eps, sigma(s1) * (r1 * h).exp_m1(), None);
        let (eps_r1, _) = eps_at(&rounded(&u1), s1)?;
        // dpm_solver_2_step(r1 = 1/3): the low-order estimate.
        let x_low = step_f64(&x, &eps, sigma(t) * h.exp_m1(), Some((sigma(t) / (2.0 * r1) * h.exp_m1(), &eps_r1)));
        // dpm_solver_3_step, eps and eps_r1 from the cache.
        let s2 = s + r2 * h;
        let b2 = sigma(s2) * (r2 / r1) * ((r2 * h).exp_m1() / (r2 * h) - 1.0);
        let u2 = step_f64(&x, &eps, sigma(s2) * (r2 * h).exp_m1(), Some((b2, &eps_r1)));
        let (eps_r2, _) = eps_at(&rounded(&u2), s2)?;
        let b3 = sigma(t) / r2 * (h.exp_m1() / h - 1.0);
        let x_high = step_f64(&x, &eps, sigma(t) * h.exp_m1(), Some((b3, &eps_r2)));

        let sum_sq: f64 = (0..x.len())
            .map(|j| {
                let delta = ATOL.max(RTOL * x_low[j].abs().max(x_prev[j].abs()));
                ((x_low[j] - x_high[j]) / delta).powi(2)
            })
            .sum();
        let error = sum_sq.sqrt() / (x.len() as f64).sqrt();
        let start = s;
        if pid.propose(error) {
            x_prev = x_low;
            x = rounded(&x_high);
            s = t;
        }
        run.report_info(&StepInfo {
            step: tries,
            total: n,
            sigma: sigma(start),
            sigma_next: sigma(t),
            x: &x,
            denoised: &den,
        });
        tries += 1;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::orders;

    #[test]
    fn orders_sum_to_the_model_calls() {
        assert_eq!(orders(1), [1]);
        assert_eq!(orders(2), [2]);
        assert_eq!(orders(3), [2, 1]);
        assert_eq!(orders(4), [3, 1]);
        assert_eq!(orders(8), [3, 3, 2]);
        assert_eq!(orders(9), [3, 3, 2, 1]);
        for n in 1..100 {
            assert_eq!(orders(n).iter().sum::<usize>(), n);
        }
    }
}
