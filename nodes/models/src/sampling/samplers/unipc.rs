//! UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
//! Models"): ComfyUI's `uni_pc` and `uni_pc_bh2`, i.e. `sample_unipc(variant='bh1' | 'bh2')` of
//! `comfy/extra_samplers/uni_pc.py` (Comfy-Org/ComfyUI @ a125cd84b054a57729b5eecab930ca9408719832; the file last
//! changed in 507199d9a8902f9dd35a90d4bd2fc3b12cdf54f1).
//!
//! What ComfyUI runs: the multistep B(h) solver with data (x0) prediction, order `min(3, steps - 1)`,
//! `lower_order_final`, on a `SigmaConvert` noise schedule whose time is the sigma itself, so the model is called at
//! exactly the given sigmas, one call per step. It works on the variance-preserving latent
//! `x_vp = x / sqrt(1 + sigma^2)`, and its data prediction `(x_vp - std * eps) / alpha` of the model's
//! `eps = (x - denoised) / sigma` is the denoised latent itself. Written for the k-diffusion latent
//! `x = x_vp / alpha` the VP factors cancel: with `lambda = -ln sigma` (SigmaConvert's `log alpha - log std`),
//! `h = lambda_t - lambda_prev` and `r_k = (lambda_prev_k - lambda_prev) / h`, one update from the last model
//! output `m0` at `sigma_prev` to `sigma_t` is
//!
//! ```text
//! base = (sigma_t / sigma_prev) x - expm1(-h) m0                          (DDIM / DPM-Solver++ 1)
//! D_k  = (m_k - m0) / r_k                                                 (older outputs m_k)
//! predictor: x~ = base - B(h) sum_k rho_p[k] D_k
//! corrector: x  = base - B(h) (sum_k rho_c[k] D_k + rho_c[last] (model(x~, sigma_t) - m0))
//! ```
//!
//! with `B(h) = -h` (bh1) or `expm1(-h)` (bh2) and the rhos solving UniPC's `R rho = b` (rho 1/2 for the order-2
//! predictor and the order-1 corrector, as ComfyUI has it). The model output at the predicted `x~` is what the
//! next steps use (UniPC's trick: the corrector costs no extra call). Orders warm up 1, 2, 3; the last two steps are
//! order 2 and 1; the last step has no corrector.
//!
//! ComfyUI's particulars kept: a final sigma of 0 is replaced by 0.001 (ComfyUI's `timesteps[-1] = 0.001`), so the
//! result is the latent at sigma 0.001 (ComfyUI's closing `x /= alpha(0.001)` brings it back from VP scale), not
//! the last denoised latent. With a single step the order is 0 and ComfyUI makes no update at all: it returns its
//! start latent rescaled, `x * sqrt(1 + sigma_end^2) / sqrt(1 + sigma_0^2)` (close to the initial noise).
//!
//! The per-step callback reports the latent the model was called on (the predicted `x~`, k-diffusion scale) with
//! its denoised estimate; ComfyUI's callback passes the same denoised latent with the corrected VP latent.
//! Arithmetic: scalars in f64, per-element updates in f64 from the f32 latent and model outputs, rounded to f32.

use super::{Denoiser, Job, Sampled, SamplerHooks};

/// Which B(h) of UniPC's B(h) family: ComfyUI's `uni_pc` is [`UniPcVariant::Bh1`], `uni_pc_bh2` is
/// [`UniPcVariant::Bh2`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniPcVariant {
    /// `B(h) = h` (in the solver's sign convention; `-h` here).
    Bh1,
    /// `B(h) = e^h - 1`.
    Bh2,
}

/// ComfyUI's maximum order.
const MAX_ORDER: usize = 3;
/// What ComfyUI solves to instead of a final sigma of 0.
const FINAL_SIGMA: f64 = 0.001;

/// SigmaConvert's `marginal_lambda` (half log-SNR) of a sigma: `log alpha - log std` = `-ln sigma`.
fn lambda(sigma: f64) -> f64 {
    -sigma.ln()
}

/// SigmaConvert's `marginal_alpha`: `1 / sqrt(1 + sigma^2)`.
fn alpha(sigma: f64) -> f64 {
    1.0 / (1.0 + sigma * sigma).sqrt()
}

/// The order ComfyUI's loop gives the update to time index `j` (>= 1) of `steps`, with solver order `order`
/// (warm-up `j` below `order`, then `lower_order_final`).
fn step_order(j: usize, order: usize, steps: usize) -> usize {
    if j < order { j } else { order.min(steps + 1 - j) }
}

/// The scalars of one update (`multistep_uni_pc_bh_update`) from the model outputs at `prev_sigmas` (oldest first,
/// at least `order` of them; the last is where the update starts) to `sigma_t`.
#[derive(Debug)]
struct Coefficients {
    /// `sigma_t / sigma_prev`.
    ratio: f64,
    /// `expm1(-h)`.
    h_phi_1: f64,
    /// B(h).
    b_h: f64,
    /// `r_k` for the `order - 1` older outputs, the one before the last first.
    rks: Vec<f64>,
    /// Predictor weights of the `D_k` (empty for order 1).
    rhos_p: Vec<f64>,
    /// Corrector weights: of the `D_k`, then of `model_t - m0`.
    rhos_c: Vec<f64>,
}

impl Coefficients {
    fn new(prev_sigmas: &[f64], sigma_t: f64, order: usize, variant: UniPcVariant) -> Coefficients {
        debug_assert!(order >= 1 && order <= prev_sigmas.len());
        let n = prev_sigmas.len();
        let sigma_prev = prev_sigmas[n - 1];
        let lambda_prev = lambda(sigma_prev);
        let h = lambda(sigma_t) - lambda_prev;
        let rks: Vec<f64> = (1..order).map(|i| (lambda(prev_sigmas[n - 1 - i]) - lambda_prev) / h).collect();

        // Data prediction: the solver runs in -h.
        let hh = -h;
        let h_phi_1 = hh.exp_m1();
        let b_h = match variant {
            UniPcVariant::Bh1 => hh,
            UniPcVariant::Bh2 => hh.exp_m1(),
        };
        // R[i][k] = rks_all[k]^i, b[i] = h phi_{i+1}(h) * (i+1)! / B(h), with rks_all = rks + [1].
        let rks_all: Vec<f64> = rks.iter().copied().chain([1.0]).collect();
        let mut r = vec![vec![0.0; order]; order];
        let mut b = vec![0.0; order];
        let mut h_phi_k = h_phi_1 / hh - 1.0;
        let mut factorial = 1.0;
        for i in 1..=order {
            for (k, &rk) in rks_all.iter().enumerate() {
                r[i - 1][k] = rk.powi(i as i32 - 1);
            }
            b[i - 1] = h_phi_k * factorial / b_h;
            factorial *= (i + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        let rhos_p = match order {
            1 => vec![],
            2 => vec![0.5],
            _ => {
                let sub: Vec<Vec<f64>> = r[..order - 1].iter().map(|row| row[..order - 1].to_vec()).collect();
                solve(sub, b[..order - 1].to_vec())
            }
        };
        let rhos_c = if order == 1 { vec![0.5] } else { solve(r, b) };
        Coefficients { ratio: sigma_t / sigma_prev, h_phi_1, b_h, rks, rhos_p, rhos_c }
    }
}

/// Solves `a x = b` (at most 3x3) by Gaussian elimination with partial pivoting (`torch.linalg.solve`'s LU).
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())).unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        let (top, below) = a.split_at_mut(col + 1);
        let p = &top[col];
        let bp = b[col];
        for (r, row) in below.iter_mut().enumerate() {
            let f = row[col] / p[col];
            for (v, pv) in row[col..].iter_mut().zip(&p[col..]) {
                *v -= f * pv;
            }
            b[col + 1 + r] -= f * bp;
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    x
}

/// One update's per-element arithmetic: from the corrected latent `x` at the last history point, the history's
/// model outputs `models` (oldest first, the last is `m0`) and, for the corrector, the model output at the
/// predicted latent.
fn update(c: &Coefficients, x: &[f32], models: &[Vec<f32>], model_t: Option<&[f32]>) -> Vec<f32> {
    let n = models.len();
    let m0 = &models[n - 1];
    let older: Vec<&Vec<f32>> = (1..=c.rks.len()).map(|i| &models[n - 1 - i]).collect();
    (0..x.len())
        .map(|j| {
            let m0j = f64::from(m0[j]);
            let base = c.ratio * f64::from(x[j]) - c.h_phi_1 * m0j;
            let d = |k: usize| (f64::from(older[k][j]) - m0j) / c.rks[k];
            let res = match model_t {
                None => (0..older.len()).map(|k| c.rhos_p[k] * d(k)).sum::<f64>(),
                Some(mt) => {
                    let last = c.rhos_c[c.rhos_c.len() - 1] * (f64::from(mt[j]) - m0j);
                    (0..older.len()).map(|k| c.rhos_c[k] * d(k)).sum::<f64>() + last
                }
            };
            (base - c.b_h * res) as f32
        })
        .collect()
}

/// `sample_unipc(variant)`: one model call per step. See the module documentation.
pub fn sample_unipc<D: Denoiser + ?Sized, H: SamplerHooks + ?Sized>(
    job: Job<'_, D, H>,
    x: Vec<f32>,
    variant: UniPcVariant,
) -> Sampled<D> {
    let sigmas = job.sigmas;
    let steps = sigmas.len().saturating_sub(1);
    // ComfyUI's timesteps: the sigmas, with a final 0 replaced.
    let mut ts = sigmas.to_vec();
    if let Some(last) = ts.last_mut()
        && *last == 0.0
    {
        *last = FINAL_SIGMA;
    }
    let order = MAX_ORDER.min(steps.saturating_sub(1));
    // The last `order` model outputs and their sigmas, oldest first, and the corrected latent at the newest.
    let mut hist_sigmas: Vec<f64> = Vec::with_capacity(MAX_ORDER);
    let mut hist_models: Vec<Vec<f32>> = Vec::with_capacity(MAX_ORDER);
    let mut corrected: Vec<f32> = Vec::new();
    job.steps(x, &mut |_, st, x| {
        let i = st.i;
        if i == 0 {
            corrected = x.clone();
        } else {
            // The corrector of the update to ts[i], with the model's output at the predicted latent `x`.
            let c = Coefficients::new(&hist_sigmas, ts[i], step_order(i, order, steps), variant);
            corrected = update(&c, &corrected, &hist_models, Some(&st.den));
        }
        if hist_models.len() == order.max(1) {
            hist_sigmas.remove(0);
            hist_models.remove(0);
        }
        hist_sigmas.push(ts[i]);
        hist_models.push(st.den);
        if order == 0 {
            // One step: ComfyUI's loop only evaluates the model, then undoes its VP scaling at the final time.
            let scale = alpha(ts[0]) / alpha(ts[steps]);
            *x = corrected.iter().map(|&v| (f64::from(v) * scale) as f32).collect();
            return Ok(());
        }
        // The predictor of the update to ts[i + 1] (the whole update on the last step, which has no corrector).
        let c = Coefficients::new(&hist_sigmas, ts[i + 1], step_order(i + 1, order, steps), variant);
        *x = update(&c, &corrected, &hist_models, None);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_warm_up_and_lower_at_the_end() {
        let orders = |steps: usize| {
            let order = MAX_ORDER.min(steps - 1);
            (1..=steps).map(|j| step_order(j, order, steps)).collect::<Vec<_>>()
        };
        assert_eq!(orders(2), [1, 1]);
        assert_eq!(orders(3), [1, 2, 1]);
        assert_eq!(orders(4), [1, 2, 2, 1]);
        assert_eq!(orders(5), [1, 2, 3, 2, 1]);
        assert_eq!(orders(8), [1, 2, 3, 3, 3, 3, 2, 1]);
    }

    #[test]
    fn solve_pivots() {
        // The first pivot is 0: needs the row swap.
        let x = solve(vec![vec![0.0, 2.0, 1.0], vec![1.0, 1.0, 1.0], vec![4.0, -1.0, 2.0]], vec![5.0, 5.0, 9.0]);
        let want = [1.0, 1.0, 3.0];
        for (g, w) in x.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{x:?}");
        }
    }

    #[test]
    fn rhos_satisfy_the_order_conditions() {
        // UniPC's corrector of order p matches R rho = b exactly; with rho the b_h-weighted sums reproduce
        // h phi_k(h) k! for every k <= p.
        for variant in [UniPcVariant::Bh1, UniPcVariant::Bh2] {
            let c = Coefficients::new(&[9.0, 4.0, 2.0], 1.2, 3, variant);
            assert_eq!(c.rks.len(), 2);
            assert!(c.rks.iter().all(|&r| r < 0.0), "{c:?}");
            let rks_all = [c.rks[0], c.rks[1], 1.0];
            let hh = -(lambda(1.2) - lambda(2.0));
            let mut phi = hh.exp_m1() / hh - 1.0;
            let mut fact = 1.0;
            for i in 1..=3 {
                let lhs: f64 = (0..3).map(|k| rks_all[k].powi(i - 1) * c.rhos_c[k]).sum();
                assert!((lhs * c.b_h - phi * fact).abs() < 1e-12, "{variant:?} row {i}");
                fact *= f64::from(i + 1);
                phi = phi / hh - 1.0 / fact;
            }
        }
    }
}
