//! Layers built from named weights: each `load` reads its tensors under a
//! prefix (checking shapes) and uploads them; `forward` records kernels.
//! Shapes follow PyTorch's `nn` modules so checkpoint tensors load as stored.

use gpu::ops::conv2d::{Conv2dOptions, ConvExtras, conv2d_fused, conv2d_with};
use gpu::ops::matmul::{Activation, MatmulOptions, linear, matmul};
use gpu::ops::norm::{group_norm, layer_norm};
use gpu::{DType, Gpu, Tensor};

use super::ModelError;
use crate::checkpoint::weights::Weights;

/// `nn.Linear`: weight `[out, in]`, optional bias `[out]`.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Loads `{prefix}.weight` (and `.bias` when present), taking the sizes from the file.
    pub fn load(gpu: &Gpu, w: &Weights, dtype: DType) -> Result<Linear, ModelError> {
        let shape = w.shape("weight")?;
        if shape.len() != 2 {
            return Err(ModelError::Config(format!("{} must be 2-D, got {shape:?}", w.full_name("weight"))));
        }
        let weight = w.tensor(gpu, "weight", &shape, dtype)?;
        let bias = if w.contains("bias") { Some(w.tensor(gpu, "bias", &[shape[0]], dtype)?) } else { None };
        Ok(Linear { weight, bias })
    }

    /// `[out, in]`, with its `[out]` bias when the file has one (diffusers' `to_q/k/v` have none).
    pub fn load_sized(gpu: &Gpu, w: &Weights, inp: usize, out: usize, dtype: DType) -> Result<Linear, ModelError> {
        let bias = if w.contains("bias") { Some(w.tensor(gpu, "bias", &[out], dtype)?) } else { None };
        Ok(Linear { weight: w.tensor(gpu, "weight", &[out, inp], dtype)?, bias })
    }

    /// `[out, in]` with its `[out]` bias, which must be there.
    pub fn load_biased(gpu: &Gpu, w: &Weights, inp: usize, out: usize, dtype: DType) -> Result<Linear, ModelError> {
        Ok(Linear {
            weight: w.tensor(gpu, "weight", &[out, inp], dtype)?,
            bias: Some(w.tensor(gpu, "bias", &[out], dtype)?),
        })
    }

    /// A per-pixel projection stored as a linear `[out, in]` (its bias optional)
    /// or as a 1x1 conv `[out, in, 1, 1]` with its bias (LDM), as `[out, in]`.
    pub fn load_pointwise(gpu: &Gpu, w: &Weights, inp: usize, out: usize, dtype: DType) -> Result<Linear, ModelError> {
        if w.shape("weight")?.len() == 2 {
            return Self::load_sized(gpu, w, inp, out, dtype);
        }
        // [out, in, 1, 1] -> [out, in]: a 1x1 conv is a linear map over channels.
        let weight = w.tensor(gpu, "weight", &[out, inp, 1, 1], dtype)?.reshape(&[out, inp])?;
        Ok(Linear { weight, bias: Some(w.tensor(gpu, "bias", &[out], dtype)?) })
    }

    /// The linear layer `build` makes from `modules` (stacked, reordered), made once per weight
    /// source while none of them is patched ([`Weights::derived`]).
    pub fn derived(
        w: &Weights,
        modules: &[&str],
        dtype: DType,
        build: impl FnOnce(&Weights) -> Result<Linear, ModelError>,
    ) -> Result<Linear, ModelError> {
        let parts =
            w.derived(modules, dtype, |w| build(w).map(|l| std::iter::once(l.weight).chain(l.bias).collect()))?;
        let mut parts = parts.into_iter();
        let weight =
            parts.next().ok_or_else(|| ModelError::Config(format!("{}: no weight", w.full_name(modules[0]))))?;
        Ok(Linear { weight, bias: parts.next() })
    }

    pub fn out_features(&self) -> usize {
        self.weight.dim(0)
    }

    /// `x [.., in] -> [.., out]`.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(linear(gpu, x, &self.weight, self.bias.as_ref())?)
    }

    /// `forward` plus `residual` (shaped as the output), added in the same kernel.
    pub fn forward_residual(&self, gpu: &Gpu, x: &Tensor, residual: Option<&Tensor>) -> Result<Tensor, ModelError> {
        let Some(residual) = residual else { return self.forward(gpu, x) };
        let opts = MatmulOptions {
            transpose_b: true,
            bias: self.bias.as_ref(),
            residual: Some(residual),
            ..Default::default()
        };
        Ok(matmul(gpu, x, &self.weight, &opts)?)
    }
}

/// `nn.Conv2d` (groups 1): weight `[out, in, kh, kw]`, optional bias `[out]`.
pub struct Conv2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2d {
    pub fn load(gpu: &Gpu, w: &Weights, stride: usize, padding: usize, dtype: DType) -> Result<Conv2d, ModelError> {
        let shape = w.shape("weight")?;
        if shape.len() != 4 {
            return Err(ModelError::Config(format!("{} must be 4-D, got {shape:?}", w.full_name("weight"))));
        }
        let weight = w.tensor(gpu, "weight", &shape, dtype)?;
        let bias = if w.contains("bias") { Some(w.tensor(gpu, "bias", &[shape[0]], dtype)?) } else { None };
        Ok(Conv2d { weight, bias, stride, padding })
    }

    /// `[out, in, k, k]` with its `[out]` bias, which must be there (every conv of the SD networks has one).
    pub fn load_sized(
        gpu: &Gpu,
        w: &Weights,
        (inp, out, k): (usize, usize, usize),
        stride: usize,
        padding: usize,
        dtype: DType,
    ) -> Result<Conv2d, ModelError> {
        let weight = w.tensor(gpu, "weight", &[out, inp, k, k], dtype)?;
        let bias = w.tensor(gpu, "bias", &[out], dtype)?;
        Ok(Conv2d { weight, bias: Some(bias), stride, padding })
    }

    pub fn in_channels(&self) -> usize {
        self.weight.dim(1)
    }

    pub fn out_channels(&self) -> usize {
        self.weight.dim(0)
    }

    /// Its stride and padding as kernel options (no activation).
    pub fn options(&self) -> Conv2dOptions {
        Conv2dOptions {
            stride: (self.stride, self.stride),
            padding: (self.padding, self.padding),
            ..Default::default()
        }
    }

    /// `x [B, in, H, W] -> [B, out, H', W']`, with an optional fused activation.
    pub fn forward_act(&self, gpu: &Gpu, x: &Tensor, activation: Activation) -> Result<Tensor, ModelError> {
        let opts = Conv2dOptions { activation, ..self.options() };
        Ok(conv2d_with(gpu, x, &self.weight, self.bias.as_ref(), &opts)?)
    }

    /// `forward` plus `residual` (shaped as the output), added in the same kernel.
    pub fn forward_residual(&self, gpu: &Gpu, x: &Tensor, residual: &Tensor) -> Result<Tensor, ModelError> {
        let extras = ConvExtras { residual: Some(residual), ..Default::default() };
        Ok(conv2d_fused(gpu, x, &self.weight, self.bias.as_ref(), &self.options(), extras)?)
    }

    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor, ModelError> {
        self.forward_act(gpu, x, Activation::None)
    }
}

/// `nn.GroupNorm` with affine weights `[C]`.
pub struct GroupNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub groups: usize,
    pub eps: f32,
}

impl GroupNorm {
    pub fn load(gpu: &Gpu, w: &Weights, groups: usize, eps: f32, dtype: DType) -> Result<GroupNorm, ModelError> {
        let shape = w.shape("weight")?;
        let c = shape.first().copied().unwrap_or(0);
        if shape.len() != 1 || c % groups != 0 {
            return Err(ModelError::Config(format!(
                "{} has shape {shape:?}: not {groups} groups of channels",
                w.full_name("weight")
            )));
        }
        Ok(GroupNorm {
            weight: w.tensor(gpu, "weight", &[c], dtype)?,
            bias: w.tensor(gpu, "bias", &[c], dtype)?,
            groups,
            eps,
        })
    }

    /// A GroupNorm over exactly `c` channels in `groups` groups.
    pub fn load_sized(
        gpu: &Gpu,
        w: &Weights,
        c: usize,
        groups: usize,
        eps: f32,
        dtype: DType,
    ) -> Result<GroupNorm, ModelError> {
        if groups == 0 || !c.is_multiple_of(groups) {
            return Err(ModelError::Config(format!(
                "{}: {c} channels do not split into {groups} groups",
                w.full_name("weight")
            )));
        }
        let weight = w.tensor(gpu, "weight", &[c], dtype)?;
        Ok(GroupNorm { weight, bias: w.tensor(gpu, "bias", &[c], dtype)?, groups, eps })
    }

    /// Normalises `x [B, C, ...]`; `silu` fuses the SiLU that usually follows.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, silu: bool) -> Result<Tensor, ModelError> {
        Ok(group_norm(gpu, x, self.groups, &self.weight, &self.bias, self.eps, silu)?)
    }
}

/// `nn.LayerNorm` over the last axis.
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f32,
}

impl LayerNorm {
    pub fn load(gpu: &Gpu, w: &Weights, eps: f32, dtype: DType) -> Result<LayerNorm, ModelError> {
        let shape = w.shape("weight")?;
        if shape.len() != 1 {
            return Err(ModelError::Config(format!("{} must be 1-D, got {shape:?}", w.full_name("weight"))));
        }
        Ok(LayerNorm {
            weight: w.tensor(gpu, "weight", &shape, dtype)?,
            bias: w.tensor(gpu, "bias", &shape, dtype)?,
            eps,
        })
    }

    /// A LayerNorm of width `c`, its weight and bias checked to be `[c]`.
    pub fn load_sized(gpu: &Gpu, w: &Weights, c: usize, eps: f32, dtype: DType) -> Result<LayerNorm, ModelError> {
        Ok(LayerNorm { weight: w.tensor(gpu, "weight", &[c], dtype)?, bias: w.tensor(gpu, "bias", &[c], dtype)?, eps })
    }

    pub fn forward(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor, ModelError> {
        Ok(layer_norm(gpu, x, &self.weight, &self.bias, self.eps)?)
    }
}
