//! Compiled compute pipelines, keyed by (shader, variant, entry point,
//! override constants), built on first use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::shaders::{ShaderFamily, Variant};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PipelineKey {
    pub family: ShaderFamily,
    pub variant: Variant,
    pub entry: &'static str,
    /// Override constants as (name, value bits), sorted by name.
    pub constants: Vec<(&'static str, u64)>,
}

#[derive(Default)]
pub struct PipelineCache {
    pipelines: Mutex<HashMap<PipelineKey, Arc<wgpu::ComputePipeline>>>,
}

impl PipelineCache {
    pub fn get_or_build(
        &self,
        key: &PipelineKey,
        build: impl FnOnce() -> wgpu::ComputePipeline,
    ) -> Arc<wgpu::ComputePipeline> {
        let mut map = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key.clone()).or_insert_with(|| Arc::new(build())).clone()
    }

    pub fn len(&self) -> usize {
        self.pipelines.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
