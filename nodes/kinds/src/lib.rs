//! sdgraph's built-in node kinds: adapters from graph ports and params to the
//! model library (the `models` crate).
//!
//! - [`checkpoint_loader`], [`text_encode`], [`latent_nodes`], [`ksampler`], [`vae_nodes`]: the SD pipeline nodes
//! - [`conditioning_nodes`]: ConditioningCombine, ConditioningSetArea and the other CONDITIONING nodes;
//!   [`unet_predictor`]: the UNet with KSampler's conditionings bound (areas, batching, ControlNets)
//! - [`lora_loader`]: LoraLoader, LoraLoaderModelOnly
//! - [`model_sampling`]: ModelSamplingDiscrete, the sampling type (eps, v_prediction, lcm, x0, img_to_img) and zsnr
//! - [`custom_sampling`]: KSamplerSelect, the schedulers, noise and guider nodes, SamplerCustom(Advanced)
//! - [`controlnet_apply`]: ControlNetLoader, ControlNetApplyAdvanced
//! - [`preprocessors`]: ControlNet preprocessors (Canny, BinaryPreprocessor)
//! - [`vae_tiled`]: VAEDecodeTiled / VAEEncodeTiled
//! - [`upscale_nodes`]: UpscaleModelLoader / ImageUpscaleWithModel
//! - [`mask_nodes`]: the mask nodes (ImageToMask)
//! - [`image_nodes`]: LoadImage, SaveImage, ImageScale, ImageScaleBy, ImageCrop, ImageBlend, ImageInvert
//! - [`png_meta`]: the graph embedded in saved PNGs
//! - [`preview`]: latent previews while sampling (`sdgraph run --preview`)
//! - [`payload`]: the values on opaque ports (models, CONDITIONING, LATENT); [`runtime`]: the shared GPU;
//!   [`settings`]: what the command passes
//!
//! Each kind declares its inputs and params once, as a `graph::node_fields!` struct; the maths they
//! call (tiling, sampling, noise masks, ControlNet residuals, image ops) is the model library's.
//! - [`plugin_values`]: how Lua plugins read and write LATENT values

/// Declares a node kind: its struct, `new` (the schema from a `graph::node_fields!` struct `$fields` and the
/// outputs), `Default` and `NodeKind`, whose `run` reads the fields and calls `$run(ctx, fields)`; with
/// `fingerprint = $fp`, `NodeKind::fingerprint` is `$fp(ctx, fields)` (what the params do not say, e.g. a file's mtime);
/// with `output_depends = $od`, `NodeKind::output_depends` is `$od(output)`.
macro_rules! node_kind {
    ($ty:ident, $name:literal, $cat:literal, $doc:literal, $fields:ident, [$(($out:literal, $port:ident, $odoc:literal)),*], $run:expr $(, fingerprint = $fp:expr)? $(, output_depends = $od:expr)?) => {
        pub struct $ty(graph::node::NodeSchema);

        impl $ty {
            pub fn new() -> Self {
                Self(graph::node::NodeSchema::new($name, $cat, $doc).fields($fields::declare)$(.output($out, graph::PortType::$port, $odoc))*)
            }
        }

        impl Default for $ty {
            fn default() -> Self {
                Self::new()
            }
        }

        impl graph::node::NodeKind for $ty {
            fn schema(&self) -> &graph::node::NodeSchema {
                &self.0
            }

            fn run(
                &self,
                ctx: &mut graph::node::RunContext<'_>,
                inputs: &graph::node::NodeInputs,
            ) -> Result<Vec<graph::Value>, graph::node::NodeError> {
                let f = $fields::read(inputs)?;
                let run: fn(&mut graph::node::RunContext<'_>, $fields) -> Result<Vec<graph::Value>, graph::node::NodeError> = $run;
                run(ctx, f)
            }
            $(
                fn fingerprint(&self, ctx: &graph::node::RunContext<'_>, inputs: &graph::node::NodeInputs) -> Option<String> {
                    let fingerprint: fn(&graph::node::RunContext<'_>, $fields) -> Option<String> = $fp;
                    fingerprint(ctx, $fields::read(inputs).ok()?)
                }
            )?
            $(
                fn output_depends(&self, output: usize) -> Option<&'static [&'static str]> {
                    let depends: fn(usize) -> Option<&'static [&'static str]> = $od;
                    depends(output)
                }
            )?
        }
    };
}

pub mod checkpoint_loader;
pub mod conditioning_nodes;
pub mod controlnet_apply;
pub mod custom_sampling;
pub mod gligen_nodes;
pub mod image_nodes;
pub mod ksampler;
pub mod latent_nodes;
pub mod lora_loader;
pub mod mask_nodes;
pub mod model_sampling;
pub mod payload;
pub mod plugin_values;
pub mod png_meta;
pub mod preprocessors;
pub mod preview;
pub mod runtime;
pub mod sampling_run;
pub mod settings;
pub mod text_encode;
pub mod unet_loader;
pub mod unet_predictor;
pub mod upscale_nodes;
pub mod vae_nodes;
pub mod vae_tiled;

use std::sync::Arc;

use graph::Registry;
use graph::registry::DuplicateKind;
pub use settings::Settings;

/// Registers every built-in node kind, with the command's `settings`.
pub fn register_builtin(reg: &mut Registry, settings: Settings) -> Result<(), DuplicateKind> {
    // Lets Lua plugins (plugin) read and write LATENT values as tables.
    plugin_values::register();
    image_nodes::register(reg, settings)?;
    reg.register(Arc::new(checkpoint_loader::CheckpointLoaderSimple::new(settings)))?;
    reg.register(Arc::new(checkpoint_loader::VaeLoader::new()))?;
    reg.register(Arc::new(unet_loader::UnetLoader::new(settings)))?;
    reg.register(Arc::new(lora_loader::LoraLoader::new()))?;
    reg.register(Arc::new(lora_loader::LoraLoaderModelOnly::new()))?;
    reg.register(Arc::new(model_sampling::ModelSamplingDiscrete::new()))?;
    reg.register(Arc::new(text_encode::ClipTextEncode::with_settings(settings)))?;
    reg.register(Arc::new(text_encode::ClipSetLastLayer::new()))?;
    conditioning_nodes::register(reg)?;
    reg.register(Arc::new(controlnet_apply::ControlNetLoader::new(settings)))?;
    reg.register(Arc::new(controlnet_apply::ControlNetApplyAdvanced::new()))?;
    reg.register(Arc::new(gligen_nodes::GligenLoader::new(settings)))?;
    reg.register(Arc::new(gligen_nodes::GligenTextBoxApply::new()))?;
    reg.register(Arc::new(preprocessors::Canny::new()))?;
    reg.register(Arc::new(preprocessors::BinaryPreprocessor::new()))?;
    reg.register(Arc::new(latent_nodes::EmptyLatentImage::new()))?;
    reg.register(Arc::new(latent_nodes::SetLatentNoiseMask::new()))?;
    reg.register(Arc::new(latent_nodes::LatentUpscale::new()))?;
    reg.register(Arc::new(latent_nodes::LatentUpscaleBy::new()))?;
    reg.register(Arc::new(latent_nodes::LatentFromBatch::new()))?;
    reg.register(Arc::new(latent_nodes::RepeatLatentBatch::new()))?;
    reg.register(Arc::new(latent_nodes::LatentComposite::new()))?;
    reg.register(Arc::new(latent_nodes::LatentCompositeMasked::new()))?;
    reg.register(Arc::new(mask_nodes::ImageToMask::new()))?;
    reg.register(Arc::new(ksampler::KSampler::new()))?;
    reg.register(Arc::new(ksampler::KSamplerAdvanced::new()))?;
    custom_sampling::register(reg)?;
    reg.register(Arc::new(vae_nodes::VaeDecode::new(settings)))?;
    reg.register(Arc::new(vae_nodes::VaeEncode::new(settings)))?;
    reg.register(Arc::new(vae_nodes::VaeEncodeForInpaint::new(settings)))?;
    reg.register(Arc::new(vae_nodes::InpaintModelConditioning::new(settings)))?;
    reg.register(Arc::new(vae_tiled::VaeDecodeTiled::new(settings)))?;
    reg.register(Arc::new(vae_tiled::VaeEncodeTiled::new(settings)))?;
    reg.register(Arc::new(upscale_nodes::UpscaleModelLoader::new(settings)))?;
    reg.register(Arc::new(upscale_nodes::ImageUpscaleWithModel::new(settings)))?;
    Ok(())
}

/// A registry holding the built-in kinds with default settings.
pub fn builtin_registry() -> Registry {
    builtin_registry_with(Settings::default())
}

/// A registry holding the built-in kinds with `settings`.
pub fn builtin_registry_with(settings: Settings) -> Registry {
    let mut reg = Registry::new();
    // Built-in names are distinct by construction; a clash is a bug caught by tests.
    register_builtin(&mut reg, settings).expect("built-in node kinds have unique names");
    reg
}
