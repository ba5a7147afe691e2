//! ComfyUI's model wrapping for discrete eps/v models (SD 1.x/2.x): from a network's raw output to the denoised
//! estimate samplers want, with classifier-free guidance, plus the initial noise scaling of `KSAMPLER.sample`.
//!
//! Mirrors Comfy-Org/ComfyUI `comfy/model_base.py` `BaseModel._apply_model` (094c74c1b7f9cd5cdd9015741e8eb26acff1142a:
//! `calculate_input`, `timestep(sigma).float()`, `calculate_denoised`), `comfy/model_sampling.py` (2fd20839...:
//! `EPS`, `V_PREDICTION`, `noise_scaling`; `X0` and `IMG_TO_IMG` as read at
//! 691e82787be231880314d980b49b06a8105c5de6), `comfy_extras/nodes_model_advanced.py` (691e8278...: `LCM`) and
//! `comfy/samplers.py` (311c0140...: `sampling_function`, whose cfg 1 shortcut skips the negative prompt,
//! `cfg_function`, `Sampler.max_denoise`). Arithmetic in f64, rounded to f32.

use super::{Denoiser, Guided};
use crate::sampling::schedulers::ModelSigmas;

/// What the network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The noise (SD 1.x, SD 2.x base): `denoised = x - out * sigma`.
    Epsilon,
    /// v (SD 2.x 768-v): `denoised = x / (sigma^2 + 1) - out * sigma / sqrt(sigma^2 + 1)`.
    V,
    /// ComfyUI's `LCM` (ModelSamplingDiscrete `lcm`, for LCM-distilled models and LoRAs): the eps estimate
    /// `x0 = x - out * sigma` blended with the input by the consistency-model boundary conditions at the scaled
    /// timestep `T = 10 t`: `denoised = T / sqrt(T^2 + 0.25) * x0 + 0.25 / (T^2 + 0.25) * x`. Used with the
    /// distilled schedule, [`ModelSigmas::distilled`].
    Lcm,
    /// ComfyUI's `X0`: the network predicts the clean latent, `denoised = out`.
    X0,
    /// ComfyUI's `IMG_TO_IMG` (an `X0` whose input is the noisy latent unscaled, `calculate_input` = identity).
    ImgToImg,
}

impl Prediction {
    /// ComfyUI's ModelSamplingDiscrete `sampling` names: `eps`, `v_prediction`, `lcm`, `x0`, `img_to_img`.
    pub const NAMES: [&'static str; 5] = ["eps", "v_prediction", "lcm", "x0", "img_to_img"];

    /// The prediction of a ModelSamplingDiscrete `sampling` name (see [`Prediction::NAMES`]).
    pub fn from_name(name: &str) -> Option<Prediction> {
        Some(match name {
            "eps" => Prediction::Epsilon,
            "v_prediction" => Prediction::V,
            "lcm" => Prediction::Lcm,
            "x0" => Prediction::X0,
            "img_to_img" => Prediction::ImgToImg,
            _ => return None,
        })
    }
}

/// ComfyUI's `model_sampling` object of a discrete SD model, as `ModelSamplingDiscrete` sets it: what the network
/// predicts, and whether the noise levels are rescaled to zero terminal SNR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSampling {
    pub prediction: Prediction,
    pub zsnr: bool,
}

impl ModelSampling {
    /// The noise levels: SD's discrete schedule ([`ModelSigmas::discrete`], rescaled with `zsnr`), and for LCM its
    /// 50-entry distilled table ([`ModelSigmas::distilled`], as ComfyUI's `ModelSamplingDiscreteDistilled`, which
    /// takes the zsnr-rescaled table when asked).
    pub fn sigmas(&self) -> ModelSigmas {
        let base = ModelSigmas::discrete(self.zsnr);
        match self.prediction {
            Prediction::Lcm => base.distilled(50).expect("1000 timesteps give 50 distilled ones"),
            _ => base,
        }
    }
}

/// Where a conditioning applies: ComfyUI's `area` `(h, w, y, x)`, in latent pixels, of a latent of `shape`
/// `[B, C, H, W]` (already clamped to it: `y + h <= H`, `x + w <= W`, none empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatentArea {
    pub shape: [usize; 4],
    pub h: usize,
    pub w: usize,
    pub y: usize,
    pub x: usize,
}

impl LatentArea {
    /// ComfyUI's `get_area_and_mult` clamp: the area's size cut to what is left of the latent past its offset;
    /// `None` when the offset is outside the latent (nothing to condition).
    pub fn clamped(shape: [usize; 4], h: usize, w: usize, y: usize, x: usize) -> Option<LatentArea> {
        let [_, _, hh, ww] = shape;
        let (h, w) = (h.min(hh.saturating_sub(y)), w.min(ww.saturating_sub(x)));
        (h > 0 && w > 0).then_some(LatentArea { shape, h, w, y, x })
    }

    /// Whether it is the whole latent.
    pub fn is_whole(&self) -> bool {
        self.y == 0 && self.x == 0 && self.h == self.shape[2] && self.w == self.shape[3]
    }

    /// The crop's shape `[B, C, h, w]`.
    pub fn crop_shape(&self) -> [usize; 4] {
        [self.shape[0], self.shape[1], self.h, self.w]
    }

    /// The index into the full latent of each element of the crop, in the crop's order.
    fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        let [b, c, hh, ww] = self.shape;
        (0..b * c).flat_map(move |bc| {
            (0..self.h).flat_map(move |r| (0..self.w).map(move |q| (bc * hh + self.y + r) * ww + self.x + q))
        })
    }

    /// The crop of `x` (a latent of `shape`).
    pub fn crop(&self, x: &[f32]) -> Vec<f32> {
        self.indices().map(|i| x[i]).collect()
    }

    /// ComfyUI's weight of each crop row (`axis` 0) or column (`axis` 1) for an area without a mask: up to 8 rows
    /// (a quarter of the crop at most) fade in linearly along each side that is inside the latent.
    fn feather(&self, axis: usize) -> Vec<f64> {
        let (len, off, full) =
            if axis == 0 { (self.h, self.y, self.shape[2]) } else { (self.w, self.x, self.shape[3]) };
        let mut f = vec![1.0; len];
        let rr = 8.min(len / 4);
        for t in 0..rr {
            let k = (1.0 / rr as f64) * (t + 1) as f64;
            if off != 0 {
                f[t] *= k;
            }
            if off + len < full {
                f[len - 1 - t] *= k;
            }
        }
        f
    }
}

/// One conditioning's raw network output: over the whole latent, or over its area's crop.
#[derive(Debug, Clone, PartialEq)]
pub struct CondPart {
    /// `None`: the whole latent.
    pub area: Option<LatentArea>,
    /// ComfyUI's conditioning `strength` (ConditioningSetArea's, 1 otherwise).
    pub strength: f64,
    /// ConditioningSetMask's weights over the crop (its mask resized to the latent, times the mask's strength,
    /// one per output value); with a mask the area's edges are not feathered.
    pub mask: Option<Vec<f32>>,
    /// The output, the crop's size when there is an area.
    pub out: Vec<f32>,
}

impl CondPart {
    /// An output over the whole latent at strength 1.
    pub fn whole(out: Vec<f32>) -> CondPart {
        CondPart { area: None, strength: 1.0, mask: None, out }
    }
}

/// A [`NoisePredictor`]'s raw outputs: for each positive conditioning, and for each negative one when asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct NetOutput {
    pub cond: Vec<CondPart>,
    pub uncond: Option<Vec<CondPart>>,
}

impl NetOutput {
    /// One positive (and negative) conditioning over the whole latent.
    pub fn whole(cond: Vec<f32>, uncond: Option<Vec<f32>>) -> NetOutput {
        NetOutput { cond: vec![CondPart::whole(cond)], uncond: uncond.map(|u| vec![CondPart::whole(u)]) }
    }
}

/// The network with its conditionings bound (a UNet, a ControlNet-patched UNet...): raw outputs for the scaled input.
pub trait NoisePredictor {
    type Error;

    /// Runs the network on `x_in = x / sqrt(sigma^2 + 1)` (`x` itself for [`Prediction::ImgToImg`]) at `timestep`
    /// (ComfyUI's integer-valued timestep of sigma, see [`ModelSigmas::sigma_to_t`]) for the positive conditioning,
    /// and also for the negative one when `with_uncond` (implementations usually batch the two). `sigma` is what the
    /// timestep was derived from, for networks that want it. Both outputs must have `x_in`'s length; `uncond` must be `Some` when asked for.
    fn predict(&mut self, x_in: &[f32], timestep: f64, sigma: f64, with_uncond: bool)
    -> Result<NetOutput, Self::Error>;

    /// See [`Denoiser::non_finite_cause`].
    fn non_finite_cause(&mut self) -> Option<String> {
        None
    }
}

/// Why [`CfgDenoiser::denoise`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CfgError<E> {
    #[error(transparent)]
    Model(E),
    #[error("the network returned {got} values for a latent of {expected}")]
    BadOutput { expected: usize, got: usize },
    #[error("the network did not return the unconditional output it was asked for")]
    MissingUncond,
}

/// A [`Denoiser`] from a [`NoisePredictor`]: ComfyUI's eps/v wrapping and classifier-free guidance
/// `uncond + (cond - uncond) * cfg` on the denoised estimates. With `cfg` equal to 1 (Python's `math.isclose`) only
/// the positive conditioning is run, as in ComfyUI.
pub struct CfgDenoiser<M> {
    pub model: M,
    pub sigmas: ModelSigmas,
    pub prediction: Prediction,
    pub cfg: f64,
}

impl<M> CfgDenoiser<M> {
    pub fn new(model: M, sigmas: ModelSigmas, prediction: Prediction, cfg: f64) -> CfgDenoiser<M> {
        CfgDenoiser { model, sigmas, prediction, cfg }
    }

    /// Whether the negative conditioning is evaluated (cfg not 1 within Python's `math.isclose` default, 1e-9).
    pub fn uses_uncond(&self) -> bool {
        (self.cfg - 1.0).abs() > 1e-9 * self.cfg.abs().max(1.0)
    }
}

/// `calculate_denoised` for one element at `sigma`, whose model timestep is `t` (only LCM's uses it).
fn denoised(prediction: Prediction, sigma: f64, t: f64, out: f32, x: f32) -> f64 {
    let (o, x) = (f64::from(out), f64::from(x));
    match prediction {
        Prediction::Epsilon => x - o * sigma,
        Prediction::V => {
            let s2 = sigma * sigma + 1.0;
            x / s2 - o * sigma / s2.sqrt()
        }
        Prediction::Lcm => {
            // comfy_extras/nodes_model_advanced.py LCM.calculate_denoised: sigma_data 0.5, timestep_scaling 10.
            let x0 = x - o * sigma;
            let (sd2, st) = (0.25, t * 10.0);
            let c_skip = sd2 / (st * st + sd2);
            let c_out = st / (st * st + sd2).sqrt();
            c_out * x0 + c_skip * x
        }
        Prediction::X0 | Prediction::ImgToImg => o,
    }
}

impl<M: NoisePredictor> CfgDenoiser<M> {
    /// The guided estimate, and with `with_uncond` the negative prompt's own (ComfyUI's `uncond_denoised`).
    fn guide(&mut self, x: &[f32], sigma: f64, with_uncond: bool) -> Result<Guided, CfgError<M::Error>> {
        // calculate_input: x / sqrt(sigma^2 + sigma_data^2), except IMG_TO_IMG's, which passes x as it is.
        let scale = if self.prediction == Prediction::ImgToImg { 1.0 } else { (sigma * sigma + 1.0).sqrt() };
        let x_in: Vec<f32> = x.iter().map(|&v| (f64::from(v) / scale) as f32).collect();
        let timestep = self.sigmas.sigma_to_t(sigma);
        let NetOutput { cond, uncond } =
            self.model.predict(&x_in, timestep, sigma, with_uncond).map_err(CfgError::Model)?;
        let p = (self.prediction, timestep);
        let cond = combine(p, sigma, x, &cond)?;
        if !with_uncond {
            return Ok(Guided { denoised: cond.iter().map(|&v| v as f32).collect(), uncond: vec![] });
        }
        let uncond = combine(p, sigma, x, &uncond.ok_or(CfgError::MissingUncond)?)?;
        let cfg = self.cfg;
        Ok(Guided {
            denoised: cond.iter().zip(&uncond).map(|(&dc, &du)| (du + (dc - du) * cfg) as f32).collect(),
            uncond: uncond.iter().map(|&v| v as f32).collect(),
        })
    }
}

impl<M: NoisePredictor> Denoiser for CfgDenoiser<M> {
    type Error = CfgError<M::Error>;

    fn denoise(&mut self, x: &[f32], sigma: f64) -> Result<Vec<f32>, Self::Error> {
        let with_uncond = self.uses_uncond();
        Ok(self.guide(x, sigma, with_uncond)?.denoised)
    }

    /// The negative prompt runs whatever the cfg (ComfyUI's `disable_cfg1_optimization`), so at cfg 1 the guided
    /// estimate is `uncond + (cond - uncond) * 1`, as in ComfyUI.
    fn denoise_with_uncond(&mut self, x: &[f32], sigma: f64) -> Result<Option<Guided>, Self::Error> {
        self.guide(x, sigma, true).map(Some)
    }

    fn percent_to_sigma(&self, percent: f64) -> Option<f64> {
        Some(self.sigmas.percent_to_sigma(percent))
    }

    fn non_finite_cause(&mut self) -> Option<String> {
        self.model.non_finite_cause()
    }
}

/// ComfyUI's `calc_cond_batch` for one side (positive or negative): each part's denoised estimate over its area,
/// weighted by its strength (feathered at area edges inside the latent), summed, and divided by the summed weights
/// plus 1e-37, so a spot no conditioning covers is 0. One part over the whole latent gives its denoised estimate
/// exactly.
fn combine<E>((p, t): (Prediction, f64), sigma: f64, x: &[f32], parts: &[CondPart]) -> Result<Vec<f64>, CfgError<E>> {
    let mut sum = vec![0.0f64; x.len()];
    let mut count = vec![1e-37f64; x.len()];
    for part in parts {
        match &part.area {
            None => {
                if part.out.len() != x.len() || part.mask.as_ref().is_some_and(|m| m.len() != x.len()) {
                    return Err(CfgError::BadOutput { expected: x.len(), got: part.out.len() });
                }
                for (i, ((s, c), (&o, &xv))) in sum.iter_mut().zip(&mut count).zip(part.out.iter().zip(x)).enumerate() {
                    let mult = part.strength * part.mask.as_ref().map_or(1.0, |m| f64::from(m[i]));
                    *s += denoised(p, sigma, t, o, xv) * mult;
                    *c += mult;
                }
            }
            Some(area) => {
                let n: usize = area.crop_shape().iter().product();
                let bad_mask = part.mask.as_ref().is_some_and(|m| m.len() != n);
                if part.out.len() != n || bad_mask || area.shape.iter().product::<usize>() != x.len() {
                    return Err(CfgError::BadOutput { expected: n, got: part.out.len() });
                }
                let (rows, cols) = (area.feather(0), area.feather(1));
                let (h, w) = (area.h, area.w);
                for (k, (i, &o)) in area.indices().zip(&part.out).enumerate() {
                    let weight = match &part.mask {
                        Some(m) => f64::from(m[k]),
                        None => rows[(k / w) % h] * cols[k % w],
                    };
                    let mult = part.strength * weight;
                    sum[i] += denoised(p, sigma, t, o, x[i]) * mult;
                    count[i] += mult;
                }
            }
        }
    }
    Ok(sum.iter().zip(&count).map(|(s, c)| s / c).collect())
}

/// ComfyUI's `Sampler.max_denoise`: whether the first sigma is the model's largest (within 1e-5 relative) or above,
/// i.e. a full txt2img run, in which case the initial noise is scaled by `sqrt(1 + sigma^2)` instead of `sigma`.
pub fn max_denoise(model: &ModelSigmas, first_sigma: f64) -> bool {
    let max_sigma = model.sigma_max();
    (max_sigma - first_sigma).abs() <= 1e-5 * max_sigma.abs().max(first_sigma.abs()) || first_sigma > max_sigma
}

/// The latent a sampler starts from (`noise_scaling` of eps/v models, in `KSAMPLER.sample`):
/// `noise * (max_denoise ? sqrt(1 + sigma^2) : sigma) + latent`, where `noise` is ComfyUI's `prepare_noise` output
/// and `latent` the input latent (zeros for txt2img; ComfyUI has applied the latent format's `process_in` to it).
///
/// # Panics
///
/// If `noise` and `latent` differ in length.
pub fn initial_latent(noise: &[f32], latent: &[f32], first_sigma: f64, max_denoise: bool) -> Vec<f32> {
    assert_eq!(noise.len(), latent.len(), "initial_latent: noise and latent differ in length");
    let scale = if max_denoise { (1.0 + first_sigma * first_sigma).sqrt() } else { first_sigma };
    noise.iter().zip(latent).map(|(&n, &l)| (f64::from(n) * scale + f64::from(l)) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns fixed parts: each a function of the element's position, so crops can be checked.
    struct Parts(Vec<(Option<LatentArea>, f64)>, Vec<(Option<LatentArea>, f64)>);

    fn value(part: usize, i: usize) -> f32 {
        (part as f32 + 1.0) * 0.25 + (i % 7) as f32 * 0.01
    }

    fn parts(list: &[(Option<LatentArea>, f64)], x_in: &[f32], offset: usize) -> Vec<CondPart> {
        list.iter()
            .enumerate()
            .map(|(k, &(area, strength))| {
                let n = area.map_or(x_in.len(), |a| a.crop_shape().iter().product());
                CondPart { area, strength, mask: None, out: (0..n).map(|i| value(k + offset, i)).collect() }
            })
            .collect()
    }

    impl NoisePredictor for Parts {
        type Error = std::convert::Infallible;
        fn predict(&mut self, x_in: &[f32], _t: f64, _s: f64, with_uncond: bool) -> Result<NetOutput, Self::Error> {
            Ok(NetOutput { cond: parts(&self.0, x_in, 0), uncond: with_uncond.then(|| parts(&self.1, x_in, 10)) })
        }
    }

    /// ComfyUI's `_calc_cond_batch` for one side, written the way ComfyUI writes it: full-size sums, a mult per
    /// crop with `rr` rows faded in on each inner side by repeated multiplication, `out / (1e-37 + counts)`.
    fn comfy_side(
        shape: [usize; 4],
        x: &[f32],
        sigma: f64,
        list: &[(Option<LatentArea>, f64)],
        off: usize,
    ) -> Vec<f64> {
        let [b, c, hh, ww] = shape;
        let mut out = vec![0.0; x.len()];
        let mut count = vec![1e-37; x.len()];
        for (k, &(area, strength)) in list.iter().enumerate() {
            let a = area.unwrap_or(LatentArea { shape, h: hh, w: ww, y: 0, x: 0 });
            let mut mult = vec![vec![strength; a.w]; a.h];
            if area.is_some() {
                let rr_h = 8.min(a.h / 4);
                let rr_w = 8.min(a.w / 4);
                for t in 0..rr_h {
                    let f = (1.0 / rr_h as f64) * (t + 1) as f64;
                    if a.y != 0 {
                        mult[t].iter_mut().for_each(|m| *m *= f);
                    }
                    if a.y + a.h < hh {
                        mult[a.h - 1 - t].iter_mut().for_each(|m| *m *= f);
                    }
                }
                for t in 0..rr_w {
                    let f = (1.0 / rr_w as f64) * (t + 1) as f64;
                    for row in mult.iter_mut() {
                        if a.x != 0 {
                            row[t] *= f;
                        }
                        if a.x + a.w < ww {
                            row[a.w - 1 - t] *= f;
                        }
                    }
                }
            }
            let mut j = 0;
            for bc in 0..b * c {
                for (r, row) in mult.iter().enumerate() {
                    for (q, &m) in row.iter().enumerate() {
                        let i = (bc * hh + a.y + r) * ww + a.x + q;
                        let d = f64::from(x[i]) - f64::from(value(k + off, j)) * sigma;
                        out[i] += d * m;
                        count[i] += m;
                        j += 1;
                    }
                }
            }
        }
        out.iter().zip(&count).map(|(o, c)| o / c).collect()
    }

    #[test]
    fn areas_are_weighted_feathered_and_averaged_as_comfyui_does() {
        let shape = [2, 3, 16, 12];
        let n: usize = shape.iter().product();
        let area = |h, w, y, x| LatentArea::clamped(shape, h, w, y, x);
        // A whole entry, an inner area (feathered on all four sides), one at the top-left corner clamped to the
        // latent at the bottom and right... and a tiny one (rr = 1).
        let cond = vec![(None, 1.0), (area(8, 6, 4, 3), 1.5), (area(20, 20, 0, 0), 0.5), (area(3, 2, 12, 9), 2.0)];
        assert_eq!(cond[2].0.unwrap().crop_shape(), [2, 3, 16, 12], "clamped to the latent");
        let uncond = vec![(None, 1.0), (area(8, 6, 4, 3), 1.5)];
        let x: Vec<f32> = (0..n).map(|i| (i % 13) as f32 * 0.3 - 1.0).collect();
        let (sigma, cfg) = (2.5, 4.0);
        let mut d =
            CfgDenoiser::new(Parts(cond.clone(), uncond.clone()), ModelSigmas::sd15(), Prediction::Epsilon, cfg);
        let got = d.denoise(&x, sigma).unwrap();
        let dc = comfy_side(shape, &x, sigma, &cond, 0);
        let du = comfy_side(shape, &x, sigma, &uncond, 10);
        for i in 0..n {
            let want = (du[i] + (dc[i] - du[i]) * cfg) as f32;
            assert!((got[i] - want).abs() <= 1e-6 * want.abs().max(1.0), "{i}: {} vs {want}", got[i]);
        }
    }

    #[test]
    fn a_mask_weighs_each_value_and_replaces_the_feathering() {
        let shape = [1, 2, 6, 6];
        let x: Vec<f32> = (0..72).map(|i| i as f32 * 0.05 - 1.0).collect();
        let area = LatentArea::clamped(shape, 3, 4, 2, 1).unwrap();
        let mask: Vec<f32> = (0..24).map(|k| (k % 5) as f32 * 0.25).collect();
        struct Masked(CondPart, CondPart);
        impl NoisePredictor for Masked {
            type Error = std::convert::Infallible;
            fn predict(&mut self, _: &[f32], _: f64, _: f64, _: bool) -> Result<NetOutput, Self::Error> {
                Ok(NetOutput { cond: vec![self.0.clone(), self.1.clone()], uncond: None })
            }
        }
        let whole = CondPart::whole((0..72).map(|i| value(0, i)).collect());
        let part = CondPart {
            area: Some(area),
            strength: 1.5,
            mask: Some(mask.clone()),
            out: (0..24).map(|i| value(1, i)).collect(),
        };
        let sigma = 1.7;
        let got = CfgDenoiser::new(Masked(whole, part), ModelSigmas::sd15(), Prediction::Epsilon, 1.0)
            .denoise(&x, sigma)
            .unwrap();
        let mut k = 0;
        for c in 0..2 {
            for y in 0..6 {
                for xx in 0..6 {
                    let i = (c * 6 + y) * 6 + xx;
                    let d0 = f64::from(x[i]) - f64::from(value(0, i)) * sigma;
                    let inside = (2..5).contains(&y) && (1..5).contains(&xx);
                    let want = if inside {
                        let m = 1.5 * f64::from(mask[k]);
                        let d1 = f64::from(x[i]) - f64::from(value(1, k)) * sigma;
                        k += 1;
                        (d0 + d1 * m) / (1e-37 + 1.0 + m)
                    } else {
                        d0
                    };
                    assert!((f64::from(got[i]) - want).abs() < 1e-6, "{i}: {} vs {want}", got[i]);
                }
            }
        }
    }

    #[test]
    fn a_spot_no_entry_covers_is_zero_and_one_whole_entry_is_exact() {
        let shape = [1, 1, 8, 8];
        let n = 64;
        let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.1).collect();
        let only_area = vec![(LatentArea::clamped(shape, 4, 4, 0, 0), 1.0)];
        let mut d = CfgDenoiser::new(Parts(only_area, vec![]), ModelSigmas::sd15(), Prediction::Epsilon, 1.0);
        let out = d.denoise(&x, 1.0).unwrap();
        assert_eq!(out[63], 0.0, "ComfyUI's 0 / 1e-37");
        assert_ne!(out[0], 0.0);
        let mut whole = CfgDenoiser::new(Parts(vec![(None, 1.0)], vec![]), ModelSigmas::sd15(), Prediction::V, 1.0);
        let out = whole.denoise(&x, 1.0).unwrap();
        for (i, o) in out.iter().enumerate() {
            assert_eq!(*o, denoised(Prediction::V, 1.0, 0.0, value(0, i), x[i]) as f32);
        }
    }

    #[test]
    fn an_area_outside_the_latent_is_none() {
        assert_eq!(LatentArea::clamped([1, 4, 8, 8], 4, 4, 8, 0), None);
        assert_eq!(LatentArea::clamped([1, 4, 8, 8], 4, 4, 0, 9), None);
        let a = LatentArea::clamped([1, 4, 8, 8], 6, 6, 4, 5).unwrap();
        assert_eq!((a.h, a.w), (4, 3));
    }
}
