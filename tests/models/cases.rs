//! What several test files read the same way: a network's fixture case (inputs and the
//! reference code's outputs, under `tests/fixtures/sd_tiny/<case>/`) and the sampling
//! fixture (`tests/fixtures/sampling/sampling.json`, written by k-diffusion and ComfyUI).

use std::path::Path;
use std::sync::OnceLock;

use gpu::{DType, Gpu, Tensor};
use models::checkpoint::safetensors::SafeTensors;
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
