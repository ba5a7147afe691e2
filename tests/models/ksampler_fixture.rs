//! What the KSampler fixtures (`tests/fixtures/<folder>/{reference.safetensors,meta.json}`, made by the
//! reference code: sampling_unet and comfy_pixels) share: opening one, reading its tensors and start-latent
//! shape, and running one of its cases as a graph (CheckpointLoaderSimple on sd_tiny -> KSampler fed by test
//! node kinds with the fixture's prompts and start latent, a capture node keeping what flows through).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use gpu::DType;
use gpu::testing::shared_gpu;
use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{Image, Mask, PortType, Registry, Value as GraphValue};
use models::checkpoint::safetensors::SafeTensors;
use nodes::payload::{Conditioning, Latent};
use serde_json::Value;

/// `tests/fixtures`.
pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// One KSampler fixture: its tensors and its `meta.json`.
pub struct Fixture {
    pub tensors: SafeTensors,
    pub meta: Value,
}

impl Fixture {
    /// `tests/fixtures/<folder>/{reference.safetensors,meta.json}`.
    pub fn open(folder: &str) -> Fixture {
        let d = dir().join(folder);
        let meta = std::fs::read_to_string(d.join("meta.json")).unwrap();
        Fixture {
            tensors: SafeTensors::open(&d.join("reference.safetensors")).unwrap(),
            meta: serde_json::from_str(&meta).unwrap(),
        }
    }

    /// A tensor's shape and values, as f32.
    pub fn tensor(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        self.tensors.f32_any(name).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// The latent's shape, `meta.json`'s `shape`.
    pub fn shape(&self) -> [usize; 4] {
        let v: Vec<usize> =
            self.meta["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        v.try_into().unwrap()
    }
}

// ---- test node kinds: the fixture's prompts and start latent, and catching what flows through ----

/// The fixture's `positive` or `negative` embedding.
struct FixtureConditioning(NodeSchema, &'static Fixture);
/// A MASK stored in the fixture (`[B, H, W]`, f32).
struct FixtureMask(NodeSchema, &'static Fixture);
/// Zeros, or the fixture's `img2img.latent`.
struct FixtureLatent(NodeSchema, &'static Fixture);
/// Keeps KSampler's latent and, where connected, VAEDecode's picture.
struct Capture(NodeSchema, Arc<Mutex<Captured>>);

/// What the capture node kept of the last run.
#[derive(Default)]
pub struct Captured {
    pub latent: Option<Arc<Latent>>,
    pub image: Option<Arc<Image>>,
}

impl NodeKind for FixtureConditioning {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }
    fn run(&self, _: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<GraphValue>, NodeError> {
        let gpu = shared_gpu().ok_or_else(|| NodeError::new("no GPU"))?;
        let (shape, data) = self.1.tensor(inputs.str("which")?);
        let cond = gpu.upload(&data, &shape, DType::F32).map_err(|e| NodeError::new(e.to_string()))?;
        Ok(vec![GraphValue::payload(Conditioning::new(cond))])
    }
}

impl NodeKind for FixtureMask {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }
    fn run(&self, _: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<GraphValue>, NodeError> {
        let name = inputs.str("name")?;
        let (shape, data) = self.1.tensor(name);
        let [batch, height, width] = shape[..] else {
            return Err(NodeError::new(format!("{name}: shape {shape:?}, not [B, H, W]")));
        };
        Ok(vec![GraphValue::Mask(Arc::new(Mask { batch, height, width, data }))])
    }
}

impl NodeKind for FixtureLatent {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }
    fn run(&self, _: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<GraphValue>, NodeError> {
        let shape = self.1.shape();
        let latent = match inputs.bool("img2img")? {
            true => Latent { shape, samples: self.1.tensor("img2img.latent").1, noise_mask: None, batch_index: None },
            false => Latent::zeros(shape),
        };
        Ok(vec![GraphValue::payload(latent)])
    }
}

impl NodeKind for Capture {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }
    fn run(&self, _: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<GraphValue>, NodeError> {
        let latent = inputs.get::<Latent>("samples")?;
        let image = match inputs.inputs.contains_key("image") {
            true => Some(inputs.image("image")?),
            false => None,
        };
        *self.1.lock().unwrap() = Captured { latent: Some(latent), image };
        Ok(vec![])
    }
}

/// The built-in kinds with `settings`, plus FixtureConditioning (param `which`), FixtureMask (param `name`, a
/// tensor of the fixture), FixtureLatent (param `img2img`) and Capture (inputs `samples` and, optional, `image`)
/// over `fx`; the slot receives what Capture keeps.
pub fn registry(fx: &'static Fixture, settings: nodes::Settings) -> (Registry, Arc<Mutex<Captured>>) {
    let mut reg = nodes::builtin_registry_with(settings);
    let slot = Arc::new(Mutex::new(Captured::default()));
    let cond = NodeSchema::new("FixtureConditioning", "test", "The fixture's prompt embedding.")
        .choice("which", &["positive", "negative", "area"], "positive", "Which one (area: comfy_pixels' third text).")
        .output("conditioning", PortType::Conditioning, "[B, 77, C].");
    let mask = NodeSchema::new("FixtureMask", "test", "A mask stored in the fixture.")
        .string("name", None, "The tensor's name ([B, H, W], f32).")
        .output("mask", PortType::Mask, "[B, H, W].");
    let latent = NodeSchema::new("FixtureLatent", "test", "The fixture's start latent.")
        .bool("img2img", false, "The img2img latent instead of zeros.")
        .output("latent", PortType::Latent, &format!("{:?}.", fx.shape()));
    let capture = NodeSchema::new("Capture", "test", "Keeps the latent and the picture.")
        .input("samples", PortType::Latent, "KSampler's latent.")
        .optional_input("image", PortType::Image, "VAEDecode's picture.")
        .sink();
    reg.register(Arc::new(FixtureConditioning(cond, fx))).unwrap();
    reg.register(Arc::new(FixtureMask(mask, fx))).unwrap();
    reg.register(Arc::new(FixtureLatent(latent, fx))).unwrap();
    reg.register(Arc::new(Capture(capture, slot.clone()))).unwrap();
    (reg, slot)
}

/// The graph of one fixture case (`meta.json`'s `img2img`, `steps`, `cfg`, `sampler`, `scheduler`, `denoise`)
/// with `seed`: nodes `ckpt` (sd_tiny), `pos`, `neg`, `start` and `sample` (its output `sample.latent`), then
/// `rest`, the nodes that take it from there.
pub fn ksampler_graph(case: &Value, seed: u64, rest: &str) -> String {
    ksampler_graph_with(case, seed, ["pos.conditioning", "neg.conditioning"], rest)
}

/// [`ksampler_graph`] with KSampler's positive and negative taken from the outputs `conds` (nodes of `rest`).
pub fn ksampler_graph_with(case: &Value, seed: u64, conds: [&str; 2], rest: &str) -> String {
    let [positive, negative] = conds;
    let ckpt = dir().join("sd_tiny/model.safetensors");
    format!(
        r#"(nodes: {{
            "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": {ckpt:?} }}),
            "pos": (kind: "FixtureConditioning", params: {{ "which": "positive" }}),
            "neg": (kind: "FixtureConditioning", params: {{ "which": "negative" }}),
            "start": (kind: "FixtureLatent", params: {{ "img2img": {img2img} }}),
            "sample": (kind: "KSampler",
                inputs: {{ "model": "ckpt.model", "positive": {positive:?}, "negative": {negative:?},
                          "latent_image": "start.latent" }},
                params: {{ "seed": {seed}, "steps": {steps}, "cfg": {cfg:?}, "sampler_name": {sampler:?},
                          "scheduler": {scheduler:?}, "denoise": {denoise:?} }}),
            {rest}
        }})"#,
        img2img = case["img2img"].as_bool().unwrap(),
        steps = case["steps"].as_u64().unwrap(),
        cfg = case["cfg"].as_f64().unwrap(),
        sampler = case["sampler"].as_str().unwrap(),
        scheduler = case["scheduler"].as_str().unwrap(),
        denoise = case["denoise"].as_f64().unwrap(),
    )
}
