//! The SD 1.x denoising UNet: diffusers 0.42.1 `UNet2DConditionModel`
//! (`CrossAttnDownBlock2D`/`DownBlock2D`, `UNetMidBlock2DCrossAttn`,
//! `UpBlock2D`/`CrossAttnUpBlock2D`) under the names of LDM's
//! `ldm.modules.diffusionmodules.openaimodel.UNetModel`
//! (`model.diffusion_model.`): `time_embed`, `input_blocks`,
//! `middle_block`, `output_blocks`, `out`.
//!
//! The network is kept as LDM builds it: each `input_blocks.N` /
//! `output_blocks.N` is a short sequence of layers (ResBlock, then a
//! SpatialTransformer at attention levels, or a lone downsampler; an
//! upsampler closes each up level but the last), every input block's output
//! is pushed as a skip connection and every output block first concatenates
//! the last one on the channel axis. diffusers' down/up blocks are groups of
//! `layers_per_block (+ 1)` of these. Layers are in `unet_blocks.rs`.
//!
//! Sizes come from the weights (`UnetConfig::detect_from_weights`); what the
//! file cannot tell (heads, GroupNorm groups and eps) are config fields with
//! SD's values as defaults. Prediction type (epsilon / v) is not the network's
//! concern.

use gpu::ops::binary::add;
use gpu::ops::cast::cast;
use gpu::ops::elementwise::{Unary, unary};
use gpu::ops::embedding::timestep_embedding_as;
use gpu::ops::layout::concat;
use gpu::ops::matmul::{Activation, MatmulOptions, matmul};
use gpu::{DType, Gpu, Tensor};

use super::ModelError;
use super::nn::{Conv2d, GroupNorm, Linear};
use super::resblock::{ResBlock, TimeEmb, UNET_KEYS};
use super::unet_blocks::{AttentionHeads, Downsample, EmbTable, MiddlePatch, NormConfig, SpatialTransformer, Upsample};
use crate::checkpoint::weights::Weights;

/// What the UNet looks like. Levels are in down order (diffusers'
/// `block_out_channels`); the up path mirrors them.
#[derive(Debug, Clone, PartialEq)]
pub struct UnetConfig {
    /// Latent channels in (`input_blocks.0.0` in-channels; SD: 4).
    pub in_channels: usize,
    /// Channels out (`out.2`; SD: 4).
    pub out_channels: usize,
    /// `conv_in`'s kernel size (SD: 3).
    pub conv_in_kernel: usize,
    /// LDM's `model_channels`: conv_in's output width and the sinusoidal
    /// timestep embedding's (SD 1.x: 320; = `block_out_channels[0]` in every SD).
    pub model_channels: usize,
    /// Channels per level (SD 1.x: 320, 640, 1280, 1280).
    pub block_out_channels: Vec<usize>,
    /// ResBlocks per down level (up levels have one more; SD: 2).
    pub layers_per_block: usize,
    /// Transformer blocks in each level's SpatialTransformers; 0 = no
    /// attention at that level (SD 1.x: 1, 1, 1, 0).
    pub transformer_depth: Vec<usize>,
    /// Transformer blocks in the middle block's SpatialTransformer; 0 = a
    /// middle block of two ResBlocks only (SD: 1).
    pub mid_transformer_depth: usize,
    /// Width of the text conditioning (`attn2.to_k` in-features; SD 1.x: 768, SD 2.x: 1024).
    pub context_dim: usize,
    /// Time-embedding width (`time_embed.0` out-features; SD 1.x: 1280).
    pub time_embed_dim: usize,
    /// Attention heads (not in the file; SD 1.x: 8 at every level, SD 2.x: head_dim 64).
    pub heads: AttentionHeads,
    /// GroupNorm groups and the norms' eps (not in the file).
    pub norm: NormConfig,
}

impl UnetConfig {
    /// A ResBlock layer of `inp -> out` channels under `w`.
    fn res_layer(&self, gpu: &Gpu, w: &Weights, (inp, out): (usize, usize), dtype: DType) -> Result<Layer, ModelError> {
        let (emb, norm) = (self.time_embed_dim, (self.norm.groups, self.norm.resnet_eps));
        ResBlock::load(gpu, w, &UNET_KEYS, (inp, out, emb), norm, dtype).map(|r| Layer::Res(Box::new(r)))
    }

    /// A SpatialTransformer layer of `ch` channels and `depth` blocks under `w`.
    fn attn_layer(
        &self,
        gpu: &Gpu,
        w: &Weights,
        (ch, depth): (usize, usize),
        dtype: DType,
    ) -> Result<Layer, ModelError> {
        SpatialTransformer::load(gpu, w, ch, depth, self.context_dim, self.heads, &self.norm, dtype)
            .map(|t| Layer::Attn(Box::new(t)))
    }

    /// SD 1.x (1.4/1.5): the values every SD 1.x checkpoint has.
    pub fn sd15() -> UnetConfig {
        UnetConfig {
            in_channels: 4,
            out_channels: 4,
            conv_in_kernel: 3,
            model_channels: 320,
            block_out_channels: vec![320, 640, 1280, 1280],
            layers_per_block: 2,
            transformer_depth: vec![1, 1, 1, 0],
            mid_transformer_depth: 1,
            context_dim: 768,
            time_embed_dim: 1280,
            heads: AttentionHeads::Count(8),
            norm: NormConfig { groups: 32, resnet_eps: 1e-5, transformer_eps: 1e-6, layer_norm_eps: 1e-5 },
        }
    }

    /// Reads every size the weights give (`w` at `model.diffusion_model.`):
    /// channels per level, ResBlocks per level (by probing which
    /// `input_blocks.N` exist and where the downsamplers `input_blocks.N.0.op`
    /// are), which levels have attention and how deep, the context and time
    /// embedding widths, in/out channels. Heads default to SD 1.x's 8, or to
    /// head_dim 64 (SD 2.x) when the transformers use linear projections and
    /// a 1024-wide context, as ComfyUI's detection does; groups and eps are
    /// SD's (32; 1e-5, 1e-6, 1e-5): override them for other models.
    ///
    /// The input is the latent (4 channels), or for SD 1.x inpainting models the latent, the mask and the
    /// masked-image latent (9, ComfyUI's `concat_keys` "mask", "masked_image"); other widths are refused, and an
    /// inpainting UNet must predict the 4 latent channels.
    pub fn detect_from_weights(w: &Weights) -> Result<UnetConfig, ModelError> {
        let mut cfg = UnetConfig::detect_down_path(w)?;
        cfg.out_channels = w.shape("out.2.weight")?.first().copied().unwrap_or(0);
        match (cfg.in_channels, cfg.out_channels) {
            (4, _) | (9, 4) => Ok(cfg),
            (9, o) => Err(ModelError::Config(format!(
                "a 9-channel (inpainting) UNet must predict the 4 latent channels, but out.2.weight gives {o}"
            ))),
            (c, _) => Err(ModelError::Config(format!(
                "input_blocks.0.0.weight takes {c} input channels: sdgraph runs UNets taking 4 (the latent) or 9 \
                 (SD 1.x inpainting: latent, mask and masked-image latent)"
            ))),
        }
    }

    /// Whether this is an inpainting UNet: its input is the latent, the mask and the masked-image latent
    /// (ComfyUI's `inpaint_model`, in_channels > 4, whose `concat_cond` feeds the extra 5).
    pub fn is_inpaint(&self) -> bool {
        self.in_channels == 9 && self.out_channels == 4
    }

    /// [`UnetConfig::detect_from_weights`] for the encoder half alone
    /// (`time_embed`, `input_blocks`, `middle_block`), as a ControlNet holds
    /// it: everything but `out_channels`, which is set to `in_channels`.
    pub fn detect_down_path(w: &Weights) -> Result<UnetConfig, ModelError> {
        let conv_in = w.shape("input_blocks.0.0.weight")?;
        let &[model_channels, in_channels, k, k2] = conv_in.as_slice() else {
            return Err(ModelError::Config(format!("input_blocks.0.0.weight has shape {conv_in:?}, not a 2-D conv")));
        };
        if k != k2 || k % 2 == 0 {
            return Err(ModelError::Config(format!("input_blocks.0.0.weight: kernel {k}x{k2} is not square and odd")));
        }
        let is_res = |i: usize| w.contains(&format!("input_blocks.{i}.0.in_layers.0.weight"));
        let is_down = |i: usize| w.contains(&format!("input_blocks.{i}.0.op.weight"));
        let mut n_blocks = 0; // input blocks after conv_in
        while is_res(n_blocks + 1) || is_down(n_blocks + 1) {
            n_blocks += 1;
        }
        let layers = (1..=n_blocks).take_while(|&i| is_res(i)).count();
        if layers == 0 {
            return Err(ModelError::Config("no ResBlock at input_blocks.1.0 (in_layers.0.weight)".into()));
        }
        // Each level is `layers` ResBlocks and a downsampler, except the last: n = levels * (layers + 1) - 1.
        let levels = (n_blocks + 1) / (layers + 1);
        let expected_down = |i: usize| i.is_multiple_of(layers + 1);
        if levels * (layers + 1) != n_blocks + 1 || (1..=n_blocks).any(|i| is_down(i) != expected_down(i)) {
            return Err(ModelError::Config(format!(
                "input_blocks.1..={n_blocks} do not form levels of {layers} ResBlocks and a downsampler"
            )));
        }
        let mut block_out_channels = Vec::with_capacity(levels);
        let mut transformer_depth = Vec::with_capacity(levels);
        for level in 0..levels {
            let first = w.pp("input_blocks").pp(1 + level * (layers + 1));
            block_out_channels.push(first.shape("0.in_layers.2.weight")?.first().copied().unwrap_or(0));
            transformer_depth.push(count_transformer_blocks(&first.pp(1)));
        }
        let mid_transformer_depth = count_transformer_blocks(&w.pp("middle_block.1"));
        let context_dim = match first_transformer(w, levels, layers, &transformer_depth, mid_transformer_depth) {
            Some(t) => t.shape("transformer_blocks.0.attn2.to_k.weight")?.get(1).copied().unwrap_or(0),
            None => 0,
        };
        let time_embed_dim = w.shape("time_embed.0.weight")?.first().copied().unwrap_or(0);
        let linear_proj = first_transformer(w, levels, layers, &transformer_depth, mid_transformer_depth)
            .map(|t| t.shape("proj_in.weight").map(|s| s.len() == 2))
            .transpose()?
            .unwrap_or(false);
        let mut cfg = UnetConfig::sd15();
        if linear_proj && context_dim == 1024 {
            cfg.heads = AttentionHeads::Dim(64);
        }
        Ok(UnetConfig {
            in_channels,
            out_channels: in_channels,
            model_channels,
            conv_in_kernel: k,
            layers_per_block: layers,
            context_dim,
            time_embed_dim,
            block_out_channels,
            transformer_depth,
            mid_transformer_depth,
            ..cfg
        })
    }

    /// Skip connections the down path pushes (conv_in's and every input
    /// block's): the length ControlNet's `down` residuals must have (12 for SD 1.x).
    pub fn skip_count(&self) -> usize {
        self.block_out_channels.len() * (self.layers_per_block + 1)
    }
}

/// `transformer_blocks.N` under a SpatialTransformer prefix: how many there are (0 = not a transformer).
fn count_transformer_blocks(t: &Weights) -> usize {
    if !t.contains("norm.weight") || !t.contains("proj_in.weight") {
        return 0;
    }
    (0..).take_while(|d| t.contains(&format!("transformer_blocks.{d}.norm1.weight"))).count()
}

/// The first SpatialTransformer's weights, for the widths they share.
fn first_transformer<'a>(
    w: &Weights<'a>,
    levels: usize,
    layers: usize,
    depth: &[usize],
    mid_depth: usize,
) -> Option<Weights<'a>> {
    (0..levels)
        .find(|&l| depth[l] > 0)
        .map(|l| w.pp("input_blocks").pp(1 + l * (layers + 1)).pp(1))
        .or_else(|| (mid_depth > 0).then(|| w.pp("middle_block.1")))
}

/// One layer of an LDM `TimestepEmbedSequential`.
pub enum Layer {
    /// `input_blocks.0.0`: conv_in.
    Conv(Conv2d),
    Res(Box<ResBlock>),
    Attn(Box<SpatialTransformer>),
    Down(Downsample),
    Up(Upsample),
}

impl Layer {
    /// `skip_hw` is the spatial size of the skip connection an upsampler's output meets; `middle` is the
    /// transformer patch and this layer's transformer index, when it is a SpatialTransformer.
    fn forward(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        emb: TimeEmb<'_>,
        context: &Tensor,
        skip_hw: Option<(usize, usize)>,
        middle: Option<(&dyn MiddlePatch, usize)>,
    ) -> Result<Tensor, ModelError> {
        match self {
            Layer::Conv(c) => c.forward(gpu, x),
            Layer::Res(r) => r.forward(gpu, x, Some(emb)),
            Layer::Attn(t) => t.forward_patched(gpu, x, context, middle),
            Layer::Down(d) => d.forward(gpu, x),
            Layer::Up(u) => u.forward(gpu, x, skip_hw.unwrap_or((2 * x.dim(2), 2 * x.dim(3)))),
        }
    }
}

/// The encoder half of the UNet, which a ControlNet shares: the time
/// embedding MLP, `input_blocks` and `middle_block` (diffusers' `time_embedding`,
/// `conv_in`, `down_blocks`, `mid_block`), fields named after the LDM keys.
pub struct DownPath {
    /// `time_embed.0` (then SiLU, `time_embed.1`).
    pub time_embed_0: Linear,
    /// `time_embed.2`.
    pub time_embed_2: Linear,
    /// `input_blocks.N.M`; block 0 is conv_in.
    pub input_blocks: Vec<Vec<Layer>>,
    /// `middle_block.M`: ResBlock, SpatialTransformer, ResBlock.
    pub middle_block: Vec<Layer>,
    /// Channels of the middle block (the width of the last level).
    pub mid_channels: usize,
    /// The time projections of every ResBlock above, in one product.
    pub emb_table: Option<EmbTable>,
}

/// The SpatialTransformers among `blocks` (what ComfyUI's `transformer_index` counts).
fn transformer_count<'a>(blocks: impl IntoIterator<Item = &'a Vec<Layer>>) -> usize {
    blocks.into_iter().flatten().filter(|l| matches!(l, Layer::Attn(_))).count()
}

/// The ResBlocks among `blocks`, in order.
fn res_blocks<'a>(blocks: impl IntoIterator<Item = &'a mut Vec<Layer>>) -> impl Iterator<Item = &'a mut ResBlock> {
    blocks.into_iter().flatten().filter_map(|l| match l {
        Layer::Res(r) => Some(&mut **r),
        _ => None,
    })
}

/// The time embedding for `table`'s blocks: its product, or SiLU(emb) itself without a table.
fn project<'t>(
    gpu: &Gpu,
    table: &Option<EmbTable>,
    emb_silu: &'t Tensor,
    out: &'t mut Option<Tensor>,
) -> Result<TimeEmb<'t>, ModelError> {
    match table {
        Some(t) => Ok(TimeEmb::Projected(out.insert(t.project(gpu, emb_silu)?))),
        None => Ok(TimeEmb::Silu(emb_silu)),
    }
}

/// What [`DownPath::forward`] hands on: the middle block's output, the
/// skip connections (conv_in's and every input block's output) and the
/// time embedding after SiLU that the up path's ResBlocks take.
pub struct DownOutput {
    pub mid: Tensor,
    pub skips: Vec<Tensor>,
    pub emb_silu: Tensor,
}

/// Records a named intermediate tensor (see [`Intermediates`]), or does nothing.
pub type Recorder<'r> = Option<&'r mut Intermediates>;

fn record(trace: &mut Recorder<'_>, name: String, t: &Tensor) {
    if let Some(tr) = trace.as_deref_mut() {
        tr.push((name, t.clone()));
    }
}

impl DownPath {
    /// Loads `time_embed`, `input_blocks` and `middle_block` under `w` for
    /// `config` (checking every shape), and the channels of each skip
    /// connection the input blocks push.
    pub fn load(
        gpu: &Gpu,
        w: &Weights,
        config: &UnetConfig,
        dtype: DType,
    ) -> Result<(DownPath, Vec<usize>), ModelError> {
        let c = config;
        let levels = c.block_out_channels.len();
        if levels == 0 || c.transformer_depth.len() != levels || c.layers_per_block == 0 {
            return Err(ModelError::Config(format!(
                "{levels} levels with {} transformer depths and {} layers per block",
                c.transformer_depth.len(),
                c.layers_per_block
            )));
        }
        let (emb, l) = (c.time_embed_dim, c.layers_per_block);
        let res = |w: &Weights, i: usize, o: usize| c.res_layer(gpu, w, (i, o), dtype);
        let attn = |w: &Weights, ch: usize, depth: usize| c.attn_layer(gpu, w, (ch, depth), dtype);
        let mc = c.model_channels;
        let time_embed_0 = Linear::load_biased(gpu, &w.pp("time_embed.0"), mc, emb, dtype)?;
        let time_embed_2 = Linear::load_biased(gpu, &w.pp("time_embed.2"), emb, emb, dtype)?;

        let k = c.conv_in_kernel;
        let conv_in = Conv2d::load_sized(gpu, &w.pp("input_blocks.0.0"), (c.in_channels, mc, k), 1, k / 2, dtype)?;
        let mut input_blocks = vec![vec![Layer::Conv(conv_in)]];
        // Channels of each pushed skip connection, popped by the output blocks.
        let mut skips = vec![mc];
        let mut ch = mc;
        for level in 0..levels {
            let out = c.block_out_channels[level];
            for _ in 0..l {
                let wb = w.pp("input_blocks").pp(input_blocks.len());
                let mut block = vec![res(&wb.pp(0), ch, out)?];
                ch = out;
                if c.transformer_depth[level] > 0 {
                    block.push(attn(&wb.pp(1), ch, c.transformer_depth[level])?);
                }
                input_blocks.push(block);
                skips.push(ch);
            }
            if level + 1 < levels {
                let wb = w.pp("input_blocks").pp(input_blocks.len());
                input_blocks.push(vec![Layer::Down(Downsample::load(gpu, &wb.pp(0), ch, dtype)?)]);
                skips.push(ch);
            }
        }

        let wm = w.pp("middle_block");
        let mut middle_block = vec![res(&wm.pp(0), ch, ch)?];
        if c.mid_transformer_depth > 0 {
            middle_block.push(attn(&wm.pp(1), ch, c.mid_transformer_depth)?);
        }
        middle_block.push(res(&wm.pp(middle_block.len()), ch, ch)?);
        let emb_table =
            EmbTable::build(gpu, res_blocks(input_blocks.iter_mut().chain(std::iter::once(&mut middle_block))))?;
        Ok((DownPath { time_embed_0, time_embed_2, input_blocks, middle_block, mid_channels: ch, emb_table }, skips))
    }

    /// Checks the inputs and broadcasts the timesteps: `x [B, in, h, w]`,
    /// `context [B, L, context_dim]`, one timestep per batch item or one for all.
    pub fn check_inputs(
        c: &UnetConfig,
        x: &Tensor,
        timesteps: &[f32],
        context: &Tensor,
    ) -> Result<Vec<f32>, ModelError> {
        let &[b, cin, _, _] = x.shape() else {
            return Err(ModelError::Config(format!("UNet input must be [B, C, H, W], got {:?}", x.shape())));
        };
        if cin != c.in_channels {
            return Err(ModelError::Config(format!(
                "UNet input has {cin} channels, the model takes {}",
                c.in_channels
            )));
        }
        if context.rank() != 3 || context.dim(0) != b || context.dim(2) != c.context_dim {
            return Err(ModelError::Config(format!(
                "context must be [{b}, L, {}], got {:?}",
                c.context_dim,
                context.shape()
            )));
        }
        match timesteps.len() {
            1 => Ok(vec![timesteps[0]; b]),
            n if n == b => Ok(timesteps.to_vec()),
            n => Err(ModelError::Config(format!("{n} timesteps for a batch of {b}"))),
        }
    }

    /// The down path on checked inputs (see [`DownPath::check_inputs`]), in
    /// `dt`. `hint` (a ControlNet's embedded control image, conv_in's shape)
    /// is added to conv_in's output before anything else reads it, as
    /// diffusers' `ControlNetModel` and LDM's `cldm.ControlNet` do. `middle`
    /// runs in every transformer block (see [`MiddlePatch`]), the transformers
    /// numbered from 0.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        gpu: &Gpu,
        c: &UnetConfig,
        dt: DType,
        x: &Tensor,
        timesteps: &[f32],
        context: &Tensor,
        hint: Option<&Tensor>,
        trace: &mut Recorder<'_>,
        middle: Option<&dyn MiddlePatch>,
        input: &[Option<Tensor>],
    ) -> Result<DownOutput, ModelError> {
        // Time: sinusoidal [cos | sin] (diffusers `Timesteps`, flip_sin_to_cos, shift 0), then the MLP.
        let t_emb = timestep_embedding_as(gpu, timesteps, c.model_channels, true, 0.0, 10000.0, dt)?;
        record(trace, "time_proj".into(), &t_emb);
        let h = linear_act(gpu, &self.time_embed_0, &t_emb, Activation::Silu)?;
        // Every ResBlock's emb_layers starts with SiLU: apply it once, in
        // time_embed.2's epilogue unless the embedding itself is recorded.
        let emb_silu = if trace.is_some() {
            let emb = self.time_embed_2.forward(gpu, &h)?;
            record(trace, "time_embedding".into(), &emb);
            unary(gpu, &emb, Unary::Silu)?
        } else {
            linear_act(gpu, &self.time_embed_2, &h, Activation::Silu)?
        };
        let mut projected = None;
        let emb_in = project(gpu, &self.emb_table, &emb_silu, &mut projected)?;

        let mut h = cast(gpu, x, dt)?;
        let l = c.layers_per_block;
        let mut skips: Vec<Tensor> = Vec::with_capacity(self.input_blocks.len());
        // ComfyUI's transformer_index: the SpatialTransformers before this one.
        let mut index = 0;
        for (n, block) in self.input_blocks.iter().enumerate() {
            for layer in block {
                h = layer.forward(gpu, &h, emb_in, context, None, middle.map(|m| (m, index)))?;
                index += usize::from(matches!(layer, Layer::Attn(_)));
            }
            if let Some(Some(r)) = input.get(n) {
                // A T2I-adapter's feature (ComfyUI's apply_control 'input'): the skip and the blocks after see it.
                h = add(gpu, &h, &cast(gpu, r, dt)?).map_err(|e| residual_error("input", n, e))?;
            }
            if n == 0 {
                if let Some(hint) = hint {
                    h = add(gpu, &h, hint).map_err(|e| {
                        ModelError::Config(format!(
                            "ControlNet hint {:?} does not fit conv_in's output: {e}",
                            hint.shape()
                        ))
                    })?;
                }
                record(trace, "conv_in".into(), &h);
            } else if n % (l + 1) == 0 || n == self.input_blocks.len() - 1 {
                // A level ends with its downsampler (the last level with its last ResBlock).
                record(trace, format!("down_blocks.{}", (n - 1) / (l + 1)), &h);
            }
            skips.push(h.clone());
        }

        for layer in &self.middle_block {
            h = layer.forward(gpu, &h, emb_in, context, None, middle.map(|m| (m, index)))?;
            index += usize::from(matches!(layer, Layer::Attn(_)));
        }
        record(trace, "mid_block".into(), &h);
        Ok(DownOutput { mid: h, skips, emb_silu })
    }
}

/// The UNet's weights on the GPU, fields named after the LDM keys.
pub struct Unet {
    pub config: UnetConfig,
    pub dtype: DType,
    /// `time_embed`, `input_blocks`, `middle_block`.
    pub down: DownPath,
    /// `output_blocks.N.M`.
    pub output_blocks: Vec<Vec<Layer>>,
    /// The time projections of the output blocks' ResBlocks, in one product.
    pub up_emb_table: Option<EmbTable>,
    /// `out.0` GroupNorm (+ `out.1` SiLU, fused).
    pub out_0: GroupNorm,
    /// `out.2` 3x3 conv.
    pub out_2: Conv2d,
}

/// Intermediate tensors of one forward pass, named as diffusers' modules
/// (`time_proj`, `time_embedding`, `conv_in`, `down_blocks.N`, `mid_block`,
/// `up_blocks.N`), in the model's dtype.
pub type Intermediates = Vec<(String, Tensor)>;

/// The ControlNet residuals one UNet call adds (see [`Unet::forward_with_residuals`]), and the transformer
/// patch it runs with ([`Unet::forward_patched`]); none by default.
#[derive(Clone, Copy, Default)]
struct Residuals<'a> {
    down: Option<&'a [Tensor]>,
    mid: Option<&'a Tensor>,
    middle: Option<&'a dyn MiddlePatch>,
    /// [`UnetControl::input`].
    input: &'a [Option<Tensor>],
}

/// What the controls active at one step add inside a UNet call, as ComfyUI's `control` dict
/// (`apply_control` in `comfy/ldm/modules/diffusionmodules/openaimodel.py`): `input[n]` to the hidden
/// state after input block n (its 'input': T2I-adapters' features, which the skip connection and
/// every later block then see), `down[i]` to skip connection i where the up path reads it and `mid`
/// to the middle block's output (its 'output' and 'middle': ControlNets' residuals).
#[derive(Clone, Default)]
pub struct UnetControl {
    /// At most one per input block (conv_in's first); `None` adds nothing.
    pub input: Vec<Option<Tensor>>,
    pub down: Option<Vec<Tensor>>,
    pub mid: Option<Tensor>,
}

impl Unet {
    /// Builds the network `config` describes from `w` (at `model.diffusion_model.`),
    /// checking every tensor's shape; weights stored as `dtype`.
    pub fn load(gpu: &Gpu, w: &Weights, config: &UnetConfig, dtype: DType) -> Result<Unet, ModelError> {
        let c = config;
        let (down, mut skips) = DownPath::load(gpu, w, c, dtype)?;
        let (norm, l) = (&c.norm, c.layers_per_block);
        let res = |w: &Weights, i: usize, o: usize| c.res_layer(gpu, w, (i, o), dtype);
        let attn = |w: &Weights, ch: usize, depth: usize| c.attn_layer(gpu, w, (ch, depth), dtype);
        let levels = c.block_out_channels.len();
        let mut ch = down.mid_channels;
        let mut output_blocks = Vec::new();
        for level in (0..levels).rev() {
            let out = c.block_out_channels[level];
            for i in 0..=l {
                let wb = w.pp("output_blocks").pp(output_blocks.len());
                let skip = skips.pop().expect("one skip per output block");
                let mut block = vec![res(&wb.pp(0), ch + skip, out)?];
                ch = out;
                if c.transformer_depth[level] > 0 {
                    block.push(attn(&wb.pp(1), ch, c.transformer_depth[level])?);
                }
                if level > 0 && i == l {
                    // `.1.conv` in plain up levels, `.2.conv` after a SpatialTransformer.
                    block.push(Layer::Up(Upsample::load(gpu, &wb.pp(block.len()), ch, dtype)?));
                }
                output_blocks.push(block);
            }
        }
        let up_emb_table = EmbTable::build(gpu, res_blocks(output_blocks.iter_mut()))?;
        Ok(Unet {
            config: c.clone(),
            dtype,
            down,
            output_blocks,
            up_emb_table,
            out_0: GroupNorm {
                weight: w.tensor(gpu, "out.0.weight", &[ch], dtype)?,
                bias: w.tensor(gpu, "out.0.bias", &[ch], dtype)?,
                groups: norm.groups,
                eps: norm.resnet_eps,
            },
            out_2: Conv2d::load_sized(gpu, &w.pp("out.2"), (ch, c.out_channels, 3), 1, 1, dtype)?,
        })
    }

    /// The predicted noise (or v, or x0: whatever the checkpoint was trained
    /// for): `x [B, in, h, w]`, `timesteps` one per batch item (or one for
    /// all), `context [B, L, context_dim]` (the text encoder's output) ->
    /// `[B, out, h, w]` in `x`'s dtype. Inputs are cast to the model's dtype.
    pub fn forward(&self, gpu: &Gpu, x: &Tensor, timesteps: &[f32], context: &Tensor) -> Result<Tensor, ModelError> {
        self.run(gpu, x, timesteps, context, Residuals::default(), None)
    }

    /// `forward` with ControlNet residuals, as diffusers'
    /// `down_block_additional_residuals` / `mid_block_additional_residual`:
    /// `down[i]` is added to the `i`-th skip connection (conv_in's first;
    /// `config.skip_count()` of them, each the shape of its skip) where the
    /// up path reads it, and `mid` to the middle block's output.
    pub fn forward_with_residuals(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &[f32],
        context: &Tensor,
        down: Option<&[Tensor]>,
        mid: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        self.run(gpu, x, timesteps, context, Residuals { down, mid, middle: None, input: &[] }, None)
    }

    /// [`Unet::forward_with_residuals`] with `middle` applied in every transformer block after
    /// self-attention, the SpatialTransformers numbered 0.. in forward order (input, middle, output
    /// blocks), as ComfyUI's `transformer_options["patches"]["middle_patch"]` (GLIGEN's).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_patched(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &[f32],
        context: &Tensor,
        down: Option<&[Tensor]>,
        mid: Option<&Tensor>,
        middle: &dyn MiddlePatch,
    ) -> Result<Tensor, ModelError> {
        self.run(gpu, x, timesteps, context, Residuals { down, mid, middle: Some(middle), input: &[] }, None)
    }

    /// `forward` with what `control` adds (see [`UnetControl`]) and, when given, `middle` in every
    /// transformer block (see [`Unet::forward_patched`]): T2I-adapters, ControlNets and GLIGEN together.
    pub fn forward_controlled(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &[f32],
        context: &Tensor,
        control: &UnetControl,
        middle: Option<&dyn MiddlePatch>,
    ) -> Result<Tensor, ModelError> {
        let (down, mid, input) = (control.down.as_deref(), control.mid.as_ref(), control.input.as_slice());
        self.run(gpu, x, timesteps, context, Residuals { down, mid, middle, input }, None)
    }

    /// SpatialTransformers in the network (the transformer indices a [`MiddlePatch`] sees are 0..this).
    pub fn transformer_count(&self) -> usize {
        let down = &self.down;
        transformer_count(down.input_blocks.iter().chain([&down.middle_block]).chain(&self.output_blocks))
    }

    /// `forward` that also returns the block outputs (see [`Intermediates`]),
    /// so a mismatch can be traced to a block.
    pub fn forward_with_intermediates(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &[f32],
        context: &Tensor,
    ) -> Result<(Tensor, Intermediates), ModelError> {
        let mut trace = Vec::new();
        let y = self.run(gpu, x, timesteps, context, Residuals::default(), Some(&mut trace))?;
        Ok((y, trace))
    }

    fn run(
        &self,
        gpu: &Gpu,
        x: &Tensor,
        timesteps: &[f32],
        context: &Tensor,
        residuals: Residuals,
        mut trace: Recorder<'_>,
    ) -> Result<Tensor, ModelError> {
        let Residuals { down, mid, middle, input } = residuals;
        let c = &self.config;
        let dt = self.dtype;
        let timesteps = DownPath::check_inputs(c, x, timesteps, context)?;
        if let Some(down) = down
            && down.len() != c.skip_count()
        {
            return Err(ModelError::Config(format!(
                "{} down residuals given, the UNet has {} skip connections",
                down.len(),
                c.skip_count()
            )));
        }
        if input.len() > self.down.input_blocks.len() {
            return Err(ModelError::Config(format!(
                "{} input controls given, the UNet has {} input blocks",
                input.len(),
                self.down.input_blocks.len()
            )));
        }
        let context = cast(gpu, context, dt)?;
        let DownOutput { mid: mut h, mut skips, emb_silu } =
            self.down.forward(gpu, c, dt, x, &timesteps, &context, None, &mut trace, middle, input)?;
        let mut projected = None;
        let emb_in = project(gpu, &self.up_emb_table, &emb_silu, &mut projected)?;
        if let Some(res) = down {
            // ControlNet residuals go to the stored skips, not the running state (diffusers and cldm alike).
            for (n, (skip, r)) in skips.iter_mut().zip(res).enumerate() {
                *skip = add(gpu, skip, &cast(gpu, r, dt)?).map_err(|e| residual_error("down", n, e))?;
            }
        }
        if let Some(m) = mid {
            h = add(gpu, &h, &cast(gpu, m, dt)?).map_err(|e| residual_error("mid", 0, e))?;
        }

        let l = c.layers_per_block;
        let mut index = transformer_count(self.down.input_blocks.iter().chain([&self.down.middle_block]));
        for (n, block) in self.output_blocks.iter().enumerate() {
            let skip = skips.pop().expect("one skip per output block");
            if skip.dim(2) != h.dim(2) || skip.dim(3) != h.dim(3) {
                return Err(ModelError::Config(format!(
                    "output_blocks.{n}: hidden state {:?} does not meet its skip connection {:?}",
                    h.shape(),
                    skip.shape()
                )));
            }
            // [B, C, H, W] ++ [B, Cskip, H, W] -> [B, C + Cskip, H, W]: hidden state first, as LDM and diffusers.
            h = concat(gpu, &[&h, &skip], 1)?;
            // An upsampler must produce the size of the skip the next block reads.
            let next_hw = skips.last().map(|s| (s.dim(2), s.dim(3)));
            for layer in block {
                h = layer.forward(gpu, &h, emb_in, &context, next_hw, middle.map(|m| (m, index)))?;
                index += usize::from(matches!(layer, Layer::Attn(_)));
            }
            if n % (l + 1) == l {
                record(&mut trace, format!("up_blocks.{}", n / (l + 1)), &h);
            }
        }
        debug_assert_eq!(self.output_blocks.len(), c.block_out_channels.len() * (l + 1));

        let h = self.out_0.forward(gpu, &h, true)?;
        let y = self.out_2.forward(gpu, &h)?;
        Ok(cast(gpu, &y, x.dtype())?)
    }
}

pub(crate) fn residual_error(which: &str, i: usize, e: gpu::GpuError) -> ModelError {
    ModelError::Config(format!("ControlNet {which} residual {i} does not fit: {e}"))
}

/// `act(x W^T + b)` in one matmul (the bias and activation in its epilogue).
pub(crate) fn linear_act(gpu: &Gpu, lin: &Linear, x: &Tensor, activation: Activation) -> Result<Tensor, ModelError> {
    let opts = MatmulOptions { transpose_b: true, bias: lin.bias.as_ref(), activation, ..Default::default() };
    Ok(matmul(gpu, x, &lin.weight, &opts)?)
}
