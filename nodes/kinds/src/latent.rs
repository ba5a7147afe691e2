//! The LATENT and CONDITIONING values that flow between the SD nodes.

use std::sync::Arc;

use gpu::Tensor;

use crate::controlnet_apply::ControlApplication;

/// A batch of latents `[B, C, h, w]`, kept on the CPU: samplers, masks and
/// Lua plugins work on it directly; the UNet gets an upload per step.
#[derive(Debug, Clone, PartialEq)]
pub struct Latent {
    pub shape: [usize; 4],
    pub samples: Vec<f32>,
    /// `[B or 1, 1, h, w]` in 0..1: where inpainting may change the latent.
    pub noise_mask: Option<(Vec<usize>, Vec<f32>)>,
}

impl Latent {
    pub fn zeros(shape: [usize; 4]) -> Latent {
        Latent { shape, samples: vec![0.0; shape.iter().product()], noise_mask: None }
    }
}

/// Text conditioning: the text encoder's output `[1, 77 * chunks, C]` on the
/// GPU, and the ControlNets applied to it (ComfyUI's `control` entry).
#[derive(Clone)]
pub struct Conditioning {
    pub cond: Tensor,
    /// The ControlNets applied to this conditioning, the first applied
    /// first (ComfyUI's chain of `previous_controlnet`s): KSampler sums the
    /// residuals of those active at each step.
    pub controls: Vec<Arc<ControlApplication>>,
}

impl Conditioning {
    /// A conditioning without ControlNets.
    pub fn new(cond: Tensor) -> Conditioning {
        Conditioning { cond, controls: Vec::new() }
    }
}

impl std::fmt::Debug for Conditioning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conditioning")
            .field("cond", &self.cond.shape())
            .field("controls", &self.controls.len())
            .finish()
    }
}
