//! UNETLoader, as ComfyUI's (`nodes.py`): a diffusion model on its own (ComfyUI's
//! `models/diffusion_models`, formerly `unet`) to a MODEL, for workflows that take the text
//! encoder and VAE from elsewhere. Reads the layouts of `models::checkpoint::unet_file`.

use graph::node::err;
use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{PortType, Value};

use crate::checkpoint_loader::{ConfigOverrides, DiffusersCounts, load_unet};
use crate::runtime;
use crate::settings::Settings;
use models::checkpoint::unet_file::{UnetFileLayout, open_unet};

/// ComfyUI's `weight_dtype` choices: "default" keeps the file's weights in the model's storage
/// type; the fp8 ones store them in 8 bits there, which sdgraph does not (it warns and keeps its own).
const WEIGHT_DTYPES: &[&str] = &["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"];

graph::node_fields! {
    struct UnetLoaderFields {
        unet_name: String = path("Diffusion model file (.safetensors; LDM or diffusers layout) or diffusers unet/ folder, relative to the graph file's folder."),
        weight_dtype: String = choice(WEIGHT_DTYPES, "default",
            "How ComfyUI stores the weights; sdgraph keeps its own storage type (SDGRAPH_DTYPE) and warns on the fp8 ones."),
    }
}

/// The schema, and the settings the command passed.
pub struct UnetLoader(NodeSchema, Settings);

impl UnetLoader {
    pub fn new(settings: Settings) -> Self {
        Self(
            NodeSchema::new(
                "UNETLoader",
                "loaders",
                "Loads an SD 1.x diffusion model (the UNet alone) onto the GPU; pair it with a CLIP and a VAE from elsewhere.",
            )
            .fields(UnetLoaderFields::declare)
            .output("model", PortType::Model, "The denoising UNet."),
            settings,
        )
    }
}

impl Default for UnetLoader {
    fn default() -> Self {
        Self::new(Settings::default())
    }
}

impl NodeKind for UnetLoader {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let f = UnetLoaderFields::read(inputs)?;
        let path = ctx.resolve(f.unet_name.as_str());
        let gpu = runtime::gpu()?;
        let dtype = runtime::model_dtype(gpu, self.1.dtype);
        if f.weight_dtype != "default" {
            ctx.progress.message(&format!(
                "warning: node {:?}: weight_dtype {:?} is not supported: the weights are kept in {dtype:?} (pictures differ slightly from ComfyUI's fp8 ones)",
                ctx.node_id, f.weight_dtype
            ));
        }
        ctx.progress.message(&format!("loading {} ({dtype:?})", path.display()));
        let (src, layout, file) = open_unet(&path).map_err(err)?;
        ctx.record_input_file(&file);
        let mut meta = ConfigOverrides::read(&src).map_err(|e| err(format!("{}: {e}", file.display())))?;
        if layout == UnetFileLayout::Diffusers {
            // The metadata wins over diffusers' config.json.
            let counts = DiffusersCounts::beside(&file).map_err(err)?;
            meta.unet_heads = meta.unet_heads.or(counts.heads);
            meta.norm_groups = meta.norm_groups.or(counts.norm_groups);
        }
        let model = load_unet(gpu, &src, &meta, dtype).map_err(|e| err(format!("{}: {e}", file.display())))?;
        Ok(vec![Value::payload(model)])
    }

    /// Size and modification time of the weights file: replacing it reloads it.
    fn fingerprint(&self, ctx: &RunContext<'_>, inputs: &NodeInputs) -> Option<String> {
        let path = ctx.resolve(&UnetLoaderFields::read(inputs).ok()?.unet_name);
        let file = models::checkpoint::tensor_file::component_weights(&path, "UNet").ok()?;
        let meta = std::fs::metadata(&file).ok()?;
        Some(format!("{}:{}:{:?}", file.display(), meta.len(), meta.modified().ok()))
    }
}
