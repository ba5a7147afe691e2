//! What a UNet checkpoint's weights say beyond its architecture: the prediction type of an SD 2.x UNet.
//!
//! Mirrors Comfy-Org/ComfyUI `comfy/supported_models.py` `SD20.model_type` (read at
//! 691e82787be231880314d980b49b06a8105c5de6): SD 2.x files do not declare eps or v, so ComfyUI looks at one
//! weight, the population standard deviation of `output_blocks.11.1.transformer_blocks.0.norm1.bias`; above 0.09
//! the model is taken as v-prediction (the 768-v models), else eps (the 512-base models). Inpainting UNets
//! (input channels other than 4) are always eps. ComfyUI's own comment: "not sure how well this will actually
//! work"; it is what ComfyUI does, and a `ModelSamplingDiscrete` node overrides it.

use crate::ModelError;
use crate::checkpoint::weights::Weights;
use crate::sampling::samplers::Prediction;

/// The weight ComfyUI's SD 2.x probe reads, under the UNet prefix.
pub const SD2_V_PROBE: &str = "output_blocks.11.1.transformer_blocks.0.norm1.bias";

/// Above this standard deviation of [`SD2_V_PROBE`] an SD 2.x UNet is v-prediction.
pub const SD2_V_THRESHOLD: f64 = 0.09;

/// ComfyUI's `SD20.model_type` for the UNet under `w` taking `in_channels`: [`Prediction::V`] when the probe weight
/// is there and its population standard deviation exceeds [`SD2_V_THRESHOLD`], [`Prediction::Epsilon`] otherwise
/// (a missing probe included, as ComfyUI's `state_dict.get`).
pub fn sd2_prediction(w: &Weights, in_channels: usize) -> Result<Prediction, ModelError> {
    if in_channels != 4 || !w.contains(SD2_V_PROBE) {
        return Ok(Prediction::Epsilon);
    }
    let shape = w.shape(SD2_V_PROBE)?;
    let v = w.f32(SD2_V_PROBE, &shape)?;
    if v.is_empty() {
        return Ok(Prediction::Epsilon);
    }
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let var = v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n;
    Ok(if var.sqrt() > SD2_V_THRESHOLD { Prediction::V } else { Prediction::Epsilon })
}
