//! ModelSamplingDiscrete: what a discrete SD model predicts and which noise levels it samples with, set by hand.
//!
//! Mirrors Comfy-Org/ComfyUI `comfy_extras/nodes_model_advanced.py` `ModelSamplingDiscrete` (read at
//! 691e82787be231880314d980b49b06a8105c5de6): `sampling` eps | v_prediction | lcm | x0 | img_to_img, `zsnr`
//! (the noise levels rescaled to zero terminal SNR); lcm also takes the 50-step distilled schedule
//! (`ModelSamplingDiscreteDistilled`), as LCM models and LCM LoRAs need. The maths is the model library's
//! (`models::sampling::samplers::ModelSampling`, `Prediction`); the UNet is shared with the input MODEL (built
//! again from the same source, whose GPU tensors it reuses).

use std::sync::Arc;

use graph::Value;
use graph::node::NodeError;

use crate::payload::{ModelHandle, Prediction};
use crate::runtime;
use models::checkpoint::convert::UNET_PREFIX;
use models::unet::Unet;

graph::node_fields! {
    struct ModelSamplingDiscreteFields {
        model: Arc<ModelHandle> = input(graph::PortType::Model, "The UNet whose sampling is set."),
        sampling: String = choice(&Prediction::NAMES, "eps",
            "What the network predicts: eps (noise; SD 1.x, SD 2.x 512-base), v_prediction (SD 2.x 768-v), lcm \
             (LCM models and LoRAs: eps with LCM's boundary conditions on the 50-step distilled schedule), x0 (the \
             clean latent), img_to_img (x0 fed the noisy latent unscaled)."),
        zsnr: bool = bool(false, "Rescale the noise levels to zero terminal SNR (models trained so, e.g. some v-prediction fine-tunes)."),
    }
}

node_kind!(
    ModelSamplingDiscrete,
    "ModelSamplingDiscrete",
    "advanced/model",
    "Sets the model's prediction type and noise schedule (eps, v_prediction, lcm, x0, img_to_img; zsnr), overriding what was detected.",
    ModelSamplingDiscreteFields,
    [("model", Model, "The same UNet sampling as asked.")],
    |_ctx, f| {
        let prediction = Prediction::from_name(&f.sampling).ok_or_else(|| {
            NodeError::new(format!("param \"sampling\": {:?} is not one of {:?}", f.sampling, Prediction::NAMES))
        })?;
        let src = f.model.source.as_ref().ok_or_else(|| {
            NodeError::new("input \"model\": the MODEL does not say what it was loaded from, so it cannot be shared")
        })?;
        let gpu = runtime::gpu()?;
        let unet = Unet::load(gpu, &src.weights.prefix(UNET_PREFIX), &src.config, src.dtype)
            .map_err(|e| NodeError::new(e.to_string()))?;
        Ok(vec![Value::payload(ModelHandle { unet, prediction, zsnr: f.zsnr, source: Some(src.clone()) })])
    }
);
