//! What several test files read the same way: a network's fixture case (inputs and the
//! reference code's outputs, under `tests/fixtures/sd_tiny/<case>/`), the sampling
//! fixture (`tests/fixtures/sampling/sampling.json`, written by k-diffusion and ComfyUI),
//! and broken copies of the sd_tiny checkpoint.

use std::path::Path;
use std::sync::OnceLock;

use gpu::{DType, Gpu, Tensor};
use models::checkpoint::safetensors::{Dtype, SafeTensors, write};
use models::checkpoint::weights::WeightSource;
use serde_json::Value;

/// One network's fixture case.
pub struct Case {
    pub inputs: SafeTensors,
    pub expected: SafeTensors,
}

impl Case {
    /// `tests/fixtures/sd_tiny/<name>/{inputs,expected}.safetensors`.
    pub fn open(name: &str) -> Case {
        let dir = crate::common::sd_tiny::fixtures().join(name);
        Case {
            inputs: SafeTensors::open(&dir.join("inputs.safetensors")).unwrap(),
            expected: SafeTensors::open(&dir.join("expected.safetensors")).unwrap(),
        }
    }

    /// An input, uploaded as f32.
    pub fn input(&self, gpu: &Gpu, name: &str) -> Tensor {
        let (shape, data) = self.inputs.f32_any(name).unwrap();
        gpu.upload(&data, &shape, DType::F32).unwrap()
    }

    /// An expected output's shape and values.
    pub fn want(&self, name: &str) -> (Vec<usize>, Vec<f32>) {
        self.expected.f32_any(name).unwrap()
    }
}

/// The sampling fixture, parsed once.
pub fn sampling_fixture() -> &'static Value {
    static FIXTURE: OnceLock<Value> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sampling/sampling.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    })
}

/// A JSON array of numbers.
pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// One tensor of a checkpoint as a broken copy keeps it: `(shape, values)`, or `None` to leave it out.
pub type Edited = Option<(Vec<usize>, Vec<f32>)>;

/// The error `load` gives on a broken copy of sd_tiny/model.safetensors: the copy holds the tensors under
/// `prefix`, each as `edit(name, shape, values)` returns it; `tag` names the temporary file (removed after).
/// Panics when `load` succeeds.
pub fn broken_checkpoint_error<T, E: std::fmt::Display>(
    prefix: &str,
    tag: &str,
    edit: impl Fn(&str, Vec<usize>, Vec<f32>) -> Edited,
    load: impl FnOnce(&WeightSource) -> Result<T, E>,
) -> String {
    let st = SafeTensors::open(&crate::common::sd_tiny::fixtures().join("model.safetensors")).unwrap();
    let mut tensors = Vec::new();
    for name in st.names().filter(|n| n.starts_with(prefix)) {
        let (shape, data) = st.f32_any(name).unwrap();
        if let Some((shape, data)) = edit(name, shape, data) {
            tensors.push((name.to_string(), shape, data));
        }
    }
    let refs: Vec<(&str, &[usize], &[f32])> =
        tensors.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())).collect();
    let path = std::env::temp_dir().join(format!("sdgraph_{tag}_{}.safetensors", std::process::id()));
    write(&path, &refs, Dtype::F32).unwrap();
    let result = load(&WeightSource::single_file(&path).unwrap());
    std::fs::remove_file(&path).ok();
    match result {
        Ok(_) => panic!("{tag}: the broken checkpoint loads"),
        Err(e) => e.to_string(),
    }
}
