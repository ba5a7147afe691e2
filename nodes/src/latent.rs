//! The LATENT and CONDITIONING values that flow between the SD nodes.

use engine::gpu::Tensor;

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

/// Text conditioning: the text encoder's output `[1, 77 * chunks, C]` on the GPU.
#[derive(Debug, Clone)]
pub struct Conditioning {
    pub cond: Tensor,
}
