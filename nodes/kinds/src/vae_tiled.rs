//! VAEDecodeTiled and VAEEncodeTiled, as ComfyUI's nodes, and the tiled
//! pass VAEDecode and VAEEncode fall back to when one activation of the
//! full-size pass would not fit the adapter.
//!
//! ComfyUI (github.com/Comfy-Org/ComfyUI):
//! `nodes.py`@5aabaf5171541aa26738d53f9d1f91c1b3e3497a (`VAEDecodeTiled`,
//! `VAEEncodeTiled`), `comfy/sd.py`@35ead008b9f8b0928fb0b674e97923d3ebd57be3
//! (`VAE.decode_tiled_`, `VAE.encode_tiled_`, the fallback in `VAE.decode` /
//! `VAE.encode`), `comfy/utils.py`@b3be02d6e766a8d3743dcf99cc967118f3ec8e3e
//! (`tiled_scale_multidim`).
//!
//! As ComfyUI: a tiled pass ([`tiled_scale`]) cuts the input into tiles at
//! origins `0, tile - overlap, 2 (tile - overlap), ...` below `size - overlap`
//! (the last tile cut at the edge; one tile when the axis fits), runs each
//! tile alone, weights its output by a separable mask that ramps linearly
//! over `overlap` (scaled to the output) at all four edges,
//! `(t + 1) / feather` for the t-th row or column from an edge, and divides
//! the weighted sum by the summed weights; an input that fits one tile runs
//! whole. The nodes run three passes with `tile_h x tile_w` tiles of
//! `2t x t/2`, `t/2 x 2t` and `t x t` (decode; encode in the order `t x t`,
//! `t/2 x 2t`, `2t x t/2`) and average them, so every seam of one pass falls
//! inside tiles of another. VAEDecodeTiled takes `tile_size` and `overlap`
//! in pixels and, as ComfyUI, lowers `overlap` to `tile_size / 4` when it is
//! larger, then works in latent pixels (`/ factor`); VAEEncodeTiled works in
//! pixels. Blending and averaging happen on the CPU in f32, as ComfyUI's
//! default intermediate dtype; the `(x + 1) / 2` clamp to 0..1 comes after
//! the averaging. Tiles run one at a time, so the GPU holds one tile's
//! activations (plus the buffer pool's idle buffers of earlier tile shapes).
//!
//! Not as ComfyUI:
//! - no `temporal_size` / `temporal_overlap` (video VAEs only);
//! - `tile_size` and `overlap` must be multiples of the VAE's factor (8 for
//!   SD), and VAEEncodeTiled's `tile_size` of twice it, so that every tile
//!   (its half-size ones too) starts and ends on a latent pixel; ComfyUI
//!   floors (decode) or rounds tile origins (encode);
//! - VAEEncodeTiled's `overlap` must be below `tile_size / 2`: ComfyUI's
//!   half-size tiles would not advance (a `range()` error, or no tiles and a
//!   NaN latent);
//! - a tile whose largest activation exceeds the adapter's limit (below) is
//!   an error naming the largest `tile_size` that fits, where ComfyUI would
//!   run out of memory;
//! - the automatic fallback is decided before running, from the largest
//!   activation of the full-size pass against the adapter's limit (wgpu
//!   reports neither free memory nor allocation failures synchronously),
//!   where ComfyUI catches an out-of-memory exception; and it runs one pass
//!   (a third of the work) in the fewest tiles that fit (the largest such),
//!   with ComfyUI's fallback overlap (16 latent pixels for a decode, 64
//!   pixels for an SD encode) capped at a quarter tile, where ComfyUI runs
//!   `decode_tiled_`'s three passes of 64-latent-pixel tiles (whose 512 px
//!   tiles would not fit lavapipe's binding either).
//!
//! Tiled and whole results differ beyond the seams too: every GroupNorm of
//! a tile normalises with the tile's statistics and the mid-block attention
//! attends within the tile. That is inherent in tiling (ComfyUI's and
//! diffusers' alike); tests/pipelines/vae_tiled.rs measures it.
//!
//! The limit: GroupNorm (`engine/gpu/src/ops/norm.rs`) binds its input and
//! output whole, so any activation larger than the adapter's
//! `max_storage_buffer_binding_size` fails there (conv2d, the elementwise
//! and layout ops window big tensors; the mid-block attention splits its
//! score matrix into blocks of at most one binding), and no tensor may
//! exceed `max_buffer_size`. The largest activation is a full-resolution
//! one: SD's decoder makes `[1, 256, H, W]` (the last upsample's output, the
//! input of the first full-resolution resnet), f32 as the VAE always runs:
//! 1 KiB per output pixel, so 256 MiB at 512x512 against lavapipe's
//! 128 MiB binding. Whole decodes fit up to 131072 output pixels there
//! (e.g. 512x256); SD's encoder makes `[1, 128, H, W]` (512 bytes per
//! pixel), so whole encodes fit up to 512x512. Checked with an SD-width
//! random-weight VAE on lavapipe (the ignored test in tests/pipelines/vae_tiled.rs):
//! whole decodes of 512x256 (and, measured once, 360x360) and a whole
//! 512x512 encode run; 512x264 decodes and 520x512 encodes fail with
//! `TooLarge` of exactly the estimated size; the fallback decodes 512x512
//! as three 512x256 strips (243 s, against 182 s for one whole 512x256
//! decode, on 2 CPU cores). `SDGRAPH_VAE_TILE_BYTES` lowers the limit (to
//! keep the VAE's memory down on a GPU that could bind more than it has
//! free, and for tests).

use std::sync::Arc;

use gpu::{DType, Gpu};
use graph::node::err;
use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{PortType, Value};

use models::image_ops::planes::{push_vae_output, vae_input};

use crate::payload::{Latent, VaeHandle};
use crate::runtime;
use crate::settings::Settings;
use models::vae::{Vae, VaeConfig};

/// The environment variable the command reads into
/// [`Settings::vae_tile_bytes`]: the largest activation, in bytes, a VAE pass
/// may make before VAEDecode / VAEEncode tile it (it can only lower the
/// adapter's own limit). Named in messages.
pub const TILE_BYTES_ENV: &str = "SDGRAPH_VAE_TILE_BYTES";

/// ComfyUI's fallback tiles overlap by 16 latent pixels when decoding
/// (`decode_tiled_`'s default) ...
const FALLBACK_DECODE_OVERLAP: usize = 16;
/// ... and by 64 pixels, 8 latent pixels of SD, when encoding (`encode_tiled_`'s).
const FALLBACK_ENCODE_OVERLAP_LATENT: usize = 8;

/// One tiled pass: tile height and width and the overlap, in input pixels
/// (latent pixels for a decode, image pixels for an encode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TilePass {
    pub tile_h: usize,
    pub tile_w: usize,
    pub overlap: usize,
}

/// How output coordinates follow input ones: decoders multiply by the
/// factor, encoders divide by it (inputs are multiples of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Up(usize),
    Down(usize),
}

impl Resample {
    fn apply(self, v: usize) -> usize {
        match self {
            Resample::Up(f) => v * f,
            Resample::Down(f) => v / f.max(1),
        }
    }
}

/// ComfyUI's tiles along one axis of `size` as (origin, length): one tile
/// when the axis fits, else origins `0, tile - overlap, ...` below
/// `size - overlap`, each cut at the edge. `None` when the tiles would not
/// advance (`tile <= overlap` on an axis longer than a tile).
pub fn tile_spans(size: usize, tile: usize, overlap: usize) -> Option<Vec<(usize, usize)>> {
    if size <= tile {
        return Some(vec![(0, size)]);
    }
    if tile <= overlap {
        return None;
    }
    Some((0..size - overlap).step_by(tile - overlap).map(|p| (p, tile.min(size - p))).collect())
}

/// The mask along one axis of a tile's output: 1, times `(t + 1) / feather`
/// on the t-th row from either edge (both factors where the ramps cross);
/// no ramp when `feather >= len`, as ComfyUI.
pub fn feather_weights(len: usize, feather: usize) -> Vec<f32> {
    let mut m = vec![1.0f32; len];
    if feather < len {
        for t in 0..feather {
            let a = ((t + 1) as f64 / feather as f64) as f32;
            m[t] *= a;
            m[len - 1 - t] *= a;
        }
    }
    m
}

/// Tiles a pass over an `h x w` input runs (one when the input fits a tile).
pub fn pass_tiles(h: usize, w: usize, pass: &TilePass) -> Option<usize> {
    if h <= pass.tile_h && w <= pass.tile_w {
        return Some(1);
    }
    Some(tile_spans(h, pass.tile_h, pass.overlap)?.len() * tile_spans(w, pass.tile_w, pass.overlap)?.len())
}

/// The function a tiled pass runs on each tile: `[c_in, th, tw]` in,
/// `[c_out, th', tw']` out (both flat, row-major).
pub type TileFn<'a> = dyn FnMut(&[f32], usize, usize) -> Result<Vec<f32>, NodeError> + 'a;

/// ComfyUI's `tiled_scale_multidim` over one `[c_in, h, w]` item: the
/// feathered, weight-normalised blend of `run` on every tile, `[c_out,
/// h', w']` with `h' = scale(h)`.
#[allow(clippy::too_many_arguments)]
pub fn tiled_scale(
    input: &[f32],
    c_in: usize,
    h: usize,
    w: usize,
    pass: &TilePass,
    scale: Resample,
    c_out: usize,
    run: &mut TileFn<'_>,
) -> Result<Vec<f32>, NodeError> {
    if input.len() != c_in * h * w || h == 0 || w == 0 {
        return Err(NodeError::new(format!("tiled pass: {} values are not a [{c_in}, {h}, {w}] input", input.len())));
    }
    let (oh, ow) = (scale.apply(h), scale.apply(w));
    let check = |out: &[f32], th: usize, tw: usize| {
        if out.len() == c_out * th * tw {
            Ok(())
        } else {
            Err(NodeError::new(format!("tiled pass: a tile gave {} values, not [{c_out}, {th}, {tw}]", out.len())))
        }
    };
    // The whole input in one tile: run it as is (ComfyUI's shortcut, no mask).
    if h <= pass.tile_h && w <= pass.tile_w {
        let out = run(input, h, w)?;
        check(&out, oh, ow)?;
        return Ok(out);
    }
    let spans = |size: usize, tile: usize| {
        tile_spans(size, tile, pass.overlap).ok_or_else(|| {
            NodeError::new(format!(
                "tiles of {}x{} with overlap {} do not advance over a {w}x{h} input",
                pass.tile_w, pass.tile_h, pass.overlap
            ))
        })
    };
    let (ys, xs) = (spans(h, pass.tile_h)?, spans(w, pass.tile_w)?);
    let feather = scale.apply(pass.overlap);
    let mut out = vec![0.0f32; c_out * oh * ow];
    let mut div = vec![0.0f32; oh * ow];
    let mut crop = Vec::new();
    for &(y0, ly) in &ys {
        for &(x0, lx) in &xs {
            crop.clear();
            for c in 0..c_in {
                for y in y0..y0 + ly {
                    let row = (c * h + y) * w;
                    crop.extend_from_slice(&input[row + x0..row + x0 + lx]);
                }
            }
            let (th, tw) = (scale.apply(ly), scale.apply(lx));
            let ps = run(&crop, ly, lx)?;
            check(&ps, th, tw)?;
            let (wy, wx) = (feather_weights(th, feather), feather_weights(tw, feather));
            let (oy, ox) = (scale.apply(y0), scale.apply(x0));
            // As ComfyUI, a tile reaching past the output is cut (not the case for exact VAEs).
            let (th_in, tw_in) = (th.min(oh - oy), tw.min(ow - ox));
            for (y, &my) in wy.iter().enumerate().take(th_in) {
                let row = &mut div[(oy + y) * ow + ox..][..tw_in];
                for (d, &mx) in row.iter_mut().zip(&wx) {
                    *d += my * mx;
                }
            }
            for c in 0..c_out {
                for (y, &my) in wy.iter().enumerate().take(th_in) {
                    let dst = &mut out[(c * oh + oy + y) * ow + ox..][..tw_in];
                    let src = &ps[(c * th + y) * tw..][..tw_in];
                    for ((o, &p), &mx) in dst.iter_mut().zip(src).zip(&wx) {
                        *o += p * (my * mx);
                    }
                }
            }
        }
    }
    for plane in out.chunks_exact_mut(oh * ow) {
        for (v, d) in plane.iter_mut().zip(&div) {
            *v /= d;
        }
    }
    Ok(out)
}

/// Runs every pass and averages them: `((p0 + p1) + p2) / 3` in f32, as
/// ComfyUI sums its passes; one pass is returned as is.
#[allow(clippy::too_many_arguments)]
pub fn run_passes(
    input: &[f32],
    c_in: usize,
    h: usize,
    w: usize,
    passes: &[TilePass],
    scale: Resample,
    c_out: usize,
    run: &mut TileFn<'_>,
) -> Result<Vec<f32>, NodeError> {
    let mut acc: Option<Vec<f32>> = None;
    for pass in passes {
        let out = tiled_scale(input, c_in, h, w, pass, scale, c_out, run)?;
        acc = Some(match acc {
            None => out,
            Some(mut a) => {
                a.iter_mut().zip(&out).for_each(|(a, o)| *a += o);
                a
            }
        });
    }
    let mut acc = acc.ok_or_else(|| NodeError::new("tiled pass: no passes"))?;
    if passes.len() > 1 {
        let n = passes.len() as f32;
        acc.iter_mut().for_each(|v| *v /= n);
    }
    Ok(acc)
}

/// VAEDecodeTiled's passes for tiles of `t` latent pixels: `2t x t/2`,
/// `t/2 x 2t`, `t x t` (height x width; `decode_tiled_`'s order).
pub fn decode_passes(t: usize, overlap: usize) -> [TilePass; 3] {
    [
        TilePass { tile_h: t * 2, tile_w: t / 2, overlap },
        TilePass { tile_h: t / 2, tile_w: t * 2, overlap },
        TilePass { tile_h: t, tile_w: t, overlap },
    ]
}

/// VAEEncodeTiled's passes for tiles of `t` pixels: `t x t`, `t/2 x 2t`,
/// `2t x t/2` (height x width; `encode_tiled_`'s order).
pub fn encode_passes(t: usize, overlap: usize) -> [TilePass; 3] {
    [
        TilePass { tile_h: t, tile_w: t, overlap },
        TilePass { tile_h: t / 2, tile_w: t * 2, overlap },
        TilePass { tile_h: t * 2, tile_w: t / 2, overlap },
    ]
}

/// Decodes one scaled latent `[C, h, w]` in tiled passes to the raw decoder
/// output `[out, h * f, w * f]` (about -1..1), averaged over the passes.
/// `on_tile` runs after every tile (progress, cancellation).
pub fn decode_tiled(
    gpu: &Gpu,
    vae: &Vae,
    item: &[f32],
    (h, w): (usize, usize),
    passes: &[TilePass],
    on_tile: &mut dyn FnMut() -> Result<(), NodeError>,
) -> Result<Vec<f32>, NodeError> {
    let cfg = &vae.config;
    let c = cfg.latent_channels;
    let mut run = |tile: &[f32], th: usize, tw: usize| -> Result<Vec<f32>, NodeError> {
        let z = gpu.upload(tile, &[1, c, th, tw], DType::F32).map_err(err)?;
        let img = vae.image_from_latent(gpu, &z).map_err(err)?;
        // Reading back waits for the tile, so the next one reuses its buffers.
        let out = gpu.download(&img).map_err(err)?;
        on_tile()?;
        Ok(out)
    };
    let f = cfg.downsample_factor();
    run_passes(item, c, h, w, passes, Resample::Up(f), cfg.out_channels, &mut run)
}

/// Encodes one picture `[in, h, w]` in -1..1 (sides multiples of the
/// factor) in tiled passes to the scaled latent (the posterior mean times
/// the scaling factor) `[C, h / f, w / f]`, averaged over the passes.
pub fn encode_tiled(
    gpu: &Gpu,
    vae: &Vae,
    pixels: &[f32],
    (h, w): (usize, usize),
    passes: &[TilePass],
    on_tile: &mut dyn FnMut() -> Result<(), NodeError>,
) -> Result<Vec<f32>, NodeError> {
    let cfg = &vae.config;
    let cin = cfg.in_channels;
    let mut run = |tile: &[f32], th: usize, tw: usize| -> Result<Vec<f32>, NodeError> {
        let x = gpu.upload(tile, &[1, cin, th, tw], DType::F32).map_err(err)?;
        let z = vae.latent_from_image(gpu, &x).map_err(err)?;
        let out = gpu.download(&z).map_err(err)?;
        on_tile()?;
        Ok(out)
    };
    let f = cfg.downsample_factor();
    run_passes(pixels, cin, h, w, passes, Resample::Down(f), cfg.latent_channels, &mut run)
}

/// Bytes of the largest single activation the decoder makes for an
/// `h x w` latent: each level's resnets at their resolution (input and
/// output channels), each upsample's output at twice it, the final
/// full-resolution tensors. SD: `[1, 256, 8h, 8w]`.
pub fn decoder_peak_bytes(cfg: &VaeConfig, dtype: DType, h: usize, w: usize) -> u64 {
    let ch = &cfg.block_out_channels;
    let Some(&top) = ch.last() else { return 0 };
    let n = ch.len();
    let px = |r: usize| (h * r) as u64 * (w * r) as u64;
    let mut peak = cfg.latent_channels.max(top) as u64 * px(1);
    let mut cin = top;
    for i in (0..n).rev() {
        let r = 1 << (n - 1 - i);
        peak = peak.max(cin.max(ch[i]) as u64 * px(r));
        if i > 0 {
            peak = peak.max(ch[i] as u64 * px(2 * r));
        }
        cin = ch[i];
    }
    peak.max(cfg.out_channels as u64 * px(1 << (n - 1))) * dtype.size() as u64
}

/// Bytes of the largest single activation the encoder makes for an
/// `h x w` picture (sides multiples of the factor): each level's resnets at
/// `h / 2^i`. SD: `[1, 128, h, w]`.
pub fn encoder_peak_bytes(cfg: &VaeConfig, dtype: DType, h: usize, w: usize) -> u64 {
    let ch = &cfg.block_out_channels;
    let Some(&first) = ch.first() else { return 0 };
    let px = |d: usize| (h / d) as u64 * (w / d) as u64;
    let mut peak = cfg.in_channels.max(first) as u64 * px(1);
    let mut cin = first;
    for (i, &c) in ch.iter().enumerate() {
        peak = peak.max(cin.max(c) as u64 * px(1 << i));
        cin = c;
    }
    peak * dtype.size() as u64
}

/// The largest activation a VAE pass may make on `gpu`: what one storage
/// binding and one buffer hold, or less when `wanted`
/// (`SDGRAPH_VAE_TILE_BYTES`, [`Settings::vae_tile_bytes`]) says so.
pub fn activation_limit(gpu: &Gpu, wanted: Option<u64>) -> u64 {
    let adapter = gpu.limits.max_storage_buffer_binding_size.min(gpu.limits.max_buffer_size);
    wanted.map_or(adapter, |v| v.min(adapter))
}

fn mib(b: u64) -> String {
    let m = b as f64 / (1u64 << 20) as f64;
    if m >= 10.0 { format!("{m:.0} MiB") } else { format!("{m:.2} MiB") }
}

/// The single pass VAEDecode / VAEEncode fall back to over an `h x w`
/// input whose tiles are `unit`-pixel multiples (1 for latents, the factor
/// for pictures): of the tiles for which `fits(tile_h, tile_w)`, the ones
/// needing the fewest tiles, and of those the largest, overlapping by
/// `overlap` capped at a quarter tile on each tiled axis. `None` when not
/// even one unit fits.
pub fn plan_fallback(
    h: usize,
    w: usize,
    unit: usize,
    overlap: usize,
    fits: &dyn Fn(usize, usize) -> bool,
) -> Option<TilePass> {
    let unit = unit.max(1);
    let (hu, wu, ou) = (h / unit, w / unit, overlap / unit);
    let mut best: Option<((usize, usize), TilePass)> = None;
    for th in 1..=hu {
        if !fits(th * unit, unit) {
            break; // taller tiles need more still
        }
        // The widest tile of this height that fits (fits shrinks as tiles grow).
        let (mut lo, mut hi) = (1, wu);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fits(th * unit, mid * unit) { lo = mid } else { hi = mid - 1 }
        }
        let tw = lo;
        let mut o = ou;
        if th < hu {
            o = o.min(th / 4);
        }
        if tw < wu {
            o = o.min(tw / 4);
        }
        let (Some(ys), Some(xs)) = (tile_spans(hu, th, o), tile_spans(wu, tw, o)) else { continue };
        // Fewest tiles (fewest seams and round trips), then the largest:
        // more context per tile keeps its GroupNorm statistics nearer the whole picture's.
        let key = (ys.len() * xs.len(), usize::MAX - th * tw);
        if best.as_ref().is_none_or(|(k, _)| key < *k) {
            best = Some((key, TilePass { tile_h: th * unit, tile_w: tw * unit, overlap: o * unit }));
        }
    }
    best.map(|(_, p)| p)
}

/// How VAEDecode decodes an `h x w` latent: whole (`None`) when its
/// largest activation fits `limit`, else the fallback pass, with a line
/// saying why for the progress output.
pub fn decode_plan(vae: &Vae, h: usize, w: usize, limit: u64) -> Result<Option<(TilePass, String)>, NodeError> {
    let (cfg, dtype) = (&vae.config, vae.dtype);
    let f = cfg.downsample_factor();
    let peak = decoder_peak_bytes(cfg, dtype, h, w);
    if peak <= limit {
        return Ok(None);
    }
    let fits = |th: usize, tw: usize| decoder_peak_bytes(cfg, dtype, th, tw) <= limit;
    let pass = plan_fallback(h, w, 1, FALLBACK_DECODE_OVERLAP, &fits).ok_or_else(|| {
        NodeError::new(format!(
            "a {}x{} decode needs a {} activation; not even a 1x1 latent tile fits the {} limit",
            w * f,
            h * f,
            mib(peak),
            mib(limit)
        ))
    })?;
    let n = pass_tiles(h, w, &pass).unwrap_or(0);
    let why = format!(
        "decoding {}x{} in {n} tiles of up to {}x{} px (overlap {} px): the whole decode needs a {} activation, \
         over the {} limit (the adapter's largest storage binding, or {TILE_BYTES_ENV})",
        w * f,
        h * f,
        pass.tile_w.min(w) * f,
        pass.tile_h.min(h) * f,
        pass.overlap * f,
        mib(peak),
        mib(limit)
    );
    Ok(Some((pass, why)))
}

/// How VAEEncode encodes an `h x w` picture (sides multiples of the
/// factor): whole (`None`) or the fallback pass with its reason.
pub fn encode_plan(vae: &Vae, h: usize, w: usize, limit: u64) -> Result<Option<(TilePass, String)>, NodeError> {
    let (cfg, dtype) = (&vae.config, vae.dtype);
    let f = cfg.downsample_factor();
    let peak = encoder_peak_bytes(cfg, dtype, h, w);
    if peak <= limit {
        return Ok(None);
    }
    let fits = |th: usize, tw: usize| encoder_peak_bytes(cfg, dtype, th, tw) <= limit;
    let pass = plan_fallback(h, w, f, FALLBACK_ENCODE_OVERLAP_LATENT * f, &fits).ok_or_else(|| {
        NodeError::new(format!(
            "a {w}x{h} encode needs a {} activation; not even a {f}x{f} tile fits the {} limit",
            mib(peak),
            mib(limit)
        ))
    })?;
    let n = pass_tiles(h, w, &pass).unwrap_or(0);
    let why = format!(
        "encoding {w}x{h} in {n} tiles of up to {}x{} px (overlap {} px): the whole encode needs a {} activation, \
         over the {} limit (the adapter's largest storage binding, or {TILE_BYTES_ENV})",
        pass.tile_w.min(w),
        pass.tile_h.min(h),
        pass.overlap,
        mib(peak),
        mib(limit)
    );
    Ok(Some((pass, why)))
}

/// Checks `tile_size` and `overlap` (pixels) are multiples of `multiple`.
fn check_multiples(tile_size: usize, overlap: usize, multiple: usize, why: &str) -> Result<(), NodeError> {
    for (name, v) in [("tile_size", tile_size), ("overlap", overlap)] {
        if !v.is_multiple_of(multiple) {
            return Err(NodeError::new(format!("param {name:?}: {v} is not a multiple of {multiple} ({why})")));
        }
    }
    Ok(())
}

/// An error when a pass's largest tile (cut to the `h x w` input) needs
/// more than `limit`, naming the largest `tile_size` (a multiple of `step`)
/// that would fit. `passes_for` gives a tile size's passes, `None` for one
/// the node would refuse.
fn check_tiles_fit(
    passes_for: &dyn Fn(usize) -> Option<Vec<TilePass>>,
    tile_size: usize,
    step: usize,
    (h, w): (usize, usize),
    peak: &dyn Fn(usize, usize) -> u64,
    limit: u64,
) -> Result<(), NodeError> {
    let worst = |ts: usize| {
        passes_for(ts).map(|ps| ps.iter().map(|p| peak(p.tile_h.min(h), p.tile_w.min(w))).max().unwrap_or(0))
    };
    let need = worst(tile_size).unwrap_or(0);
    if need <= limit {
        return Ok(());
    }
    let hint = (1..tile_size.div_ceil(step))
        .rev()
        .map(|k| k * step)
        .filter(|&ts| ts >= TILE_RANGE.0)
        .find(|&ts| worst(ts).is_some_and(|n| n <= limit))
        .map(|ts| format!("; tile_size {ts} fits"))
        .unwrap_or_default();
    Err(NodeError::new(format!(
        "param \"tile_size\": {tile_size} px tiles need a {} activation, over the {} limit (the adapter's \
         largest storage binding, or {TILE_BYTES_ENV}){hint}",
        mib(need),
        mib(limit)
    )))
}

/// Tiles of every pass over an `h x w` input, `None` when a pass's tiles
/// are empty or do not advance.
fn total_tiles(h: usize, w: usize, passes: &[TilePass]) -> Option<usize> {
    passes.iter().map(|p| if p.tile_h == 0 || p.tile_w == 0 { None } else { pass_tiles(h, w, p) }).sum()
}

/// An int param within the schema's range (a value linked from another
/// node's output is not range-checked before the run).
fn param_in(inputs: &NodeInputs, name: &str, min: usize, max: usize) -> Result<usize, NodeError> {
    let v = inputs.usize(name)?;
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(NodeError::new(format!("param {name:?}: {v} is outside {min}..={max}")))
    }
}

/// Schema ranges of `tile_size` and `overlap` (ComfyUI's).
const TILE_RANGE: (usize, usize) = (64, 4096);
const OVERLAP_RANGE: (usize, usize) = (0, 4096);

fn cancelled(ctx: &RunContext<'_>) -> Result<(), NodeError> {
    if ctx.cancelled() { Err(NodeError::new("cancelled")) } else { Ok(()) }
}

/// The schema, and the settings the command passed.
pub struct VaeDecodeTiled(NodeSchema, Settings);

impl VaeDecodeTiled {
    pub fn new(settings: Settings) -> Self {
        Self(
            NodeSchema::new(
                "VAEDecodeTiled",
                "latent",
                "Decodes latents tile by tile (ComfyUI's three averaged passes), so the GPU holds one tile's \
                 activations at a time.",
            )
            .input("samples", PortType::Latent, "The latents.")
            .input("vae", PortType::Vae, "The VAE (from CheckpointLoaderSimple).")
            .int(
                "tile_size",
                TILE_RANGE.0 as i64,
                TILE_RANGE.1 as i64,
                512,
                "Tile side in pixels; a multiple of the VAE's factor (8 for SD).",
            )
            .int(
                "overlap",
                OVERLAP_RANGE.0 as i64,
                OVERLAP_RANGE.1 as i64,
                64,
                "Pixels neighbouring tiles share (blended); a multiple of the factor; over tile_size / 4 becomes that.",
            )
            .output("image", PortType::Image, "The pictures."),
            settings,
        )
    }
}

impl Default for VaeDecodeTiled {
    fn default() -> Self {
        Self::new(Settings::default())
    }
}

impl NodeKind for VaeDecodeTiled {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let vae = inputs.get::<VaeHandle>("vae")?;
        let latent = inputs.get::<Latent>("samples")?;
        let tile_size = param_in(inputs, "tile_size", TILE_RANGE.0, TILE_RANGE.1)?;
        let overlap = param_in(inputs, "overlap", OVERLAP_RANGE.0, OVERLAP_RANGE.1)?;
        let gpu = runtime::gpu()?;
        let (cfg, dtype) = (&vae.vae.config, vae.vae.dtype);
        let f = cfg.downsample_factor();
        let why = "the VAE's factor: tiles start and end on latent pixels";
        if !tile_size.is_multiple_of(f) {
            return Err(NodeError::new(format!("param \"tile_size\": {tile_size} is not a multiple of {f} ({why})")));
        }
        // ComfyUI's VAEDecodeTiled: an overlap over a quarter tile becomes a
        // quarter tile, then floored to latent pixels as ComfyUI's `// 8`
        // (so only an overlap that is kept must be a multiple of the factor);
        // min(overlap, ts / 4) is that rule for every ts.
        let overlap = if tile_size < overlap * 4 {
            tile_size / 4
        } else if !overlap.is_multiple_of(f) {
            return Err(NodeError::new(format!("param \"overlap\": {overlap} is not a multiple of {f} ({why})")));
        } else {
            overlap
        };
        let [b, c, h, w] = latent.shape;
        if c != cfg.latent_channels {
            return Err(NodeError::new(format!(
                "the latents have {c} channels, the VAE takes {}",
                cfg.latent_channels
            )));
        }
        let passes_for = |ts: usize| {
            let passes = decode_passes(ts / f, overlap.min(ts / 4) / f).to_vec();
            total_tiles(h, w, &passes).map(|_| passes)
        };
        let passes = passes_for(tile_size).ok_or_else(|| {
            NodeError::new(format!(
                "param \"tile_size\": {tile_size} px is too small for the VAE's factor {f}: the half-size tiles of \
                 ComfyUI's passes must span at least one latent pixel more than the overlap ({overlap} px)"
            ))
        })?;
        let total = total_tiles(h, w, &passes).unwrap_or(0);
        let limit = activation_limit(gpu, self.1.vae_tile_bytes);
        let peak = |th: usize, tw: usize| decoder_peak_bytes(cfg, dtype, th, tw);
        check_tiles_fit(&passes_for, tile_size, f.max(32), (h, w), &peak, limit)?;
        let total = (total * b) as u64;
        let mut data = Vec::with_capacity(b * h * f * w * f * 3);
        let mut done = 0;
        for i in 0..b {
            cancelled(ctx)?;
            let item = &latent.samples[i * c * h * w..(i + 1) * c * h * w];
            let node = ctx.node_id;
            let mut on_tile = || {
                done += 1;
                ctx.progress.step(node, done, total, "tiles");
                cancelled(ctx)
            };
            let px = decode_tiled(gpu, &vae.vae, item, (h, w), &passes, &mut on_tile)?;
            push_vae_output(&mut data, &px, cfg.out_channels, h * f, w * f);
        }
        let image = graph::Image::from_data(b, h * f, w * f, 3, data)
            .ok_or_else(|| NodeError::new("decoded images differ in size"))?;
        Ok(vec![Value::Image(Arc::new(image))])
    }
}

/// The schema, and the settings the command passed.
pub struct VaeEncodeTiled(NodeSchema, Settings);

impl VaeEncodeTiled {
    pub fn new(settings: Settings) -> Self {
        Self(
            NodeSchema::new(
                "VAEEncodeTiled",
                "latent",
                "Encodes pictures tile by tile (ComfyUI's three averaged passes; cropped to a multiple of 8 pixels, \
                 centred, as VAEEncode).",
            )
            .input("pixels", PortType::Image, "The pictures.")
            .input("vae", PortType::Vae, "The VAE (from CheckpointLoaderSimple).")
            .int(
                "tile_size",
                TILE_RANGE.0 as i64,
                TILE_RANGE.1 as i64,
                512,
                "Tile side in pixels; a multiple of twice the VAE's factor (16 for SD).",
            )
            .int(
                "overlap",
                OVERLAP_RANGE.0 as i64,
                OVERLAP_RANGE.1 as i64,
                64,
                "Pixels neighbouring tiles share (blended); a multiple of the factor, under tile_size / 2.",
            )
            .output("latent", PortType::Latent, "The latents (the posterior mean, scaled)."),
            settings,
        )
    }
}

impl Default for VaeEncodeTiled {
    fn default() -> Self {
        Self::new(Settings::default())
    }
}

impl NodeKind for VaeEncodeTiled {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let vae = inputs.get::<VaeHandle>("vae")?;
        let img = inputs.image("pixels")?;
        let tile_size = param_in(inputs, "tile_size", TILE_RANGE.0, TILE_RANGE.1)?;
        let overlap = param_in(inputs, "overlap", OVERLAP_RANGE.0, OVERLAP_RANGE.1)?;
        let gpu = runtime::gpu()?;
        let (cfg, dtype) = (&vae.vae.config, vae.vae.dtype);
        let f = cfg.downsample_factor();
        if !tile_size.is_multiple_of(2 * f) {
            return Err(NodeError::new(format!(
                "param \"tile_size\": {tile_size} is not a multiple of {} (twice the VAE's factor {f}: the half-size \
                 tiles must start and end on latent pixels too)",
                2 * f
            )));
        }
        check_multiples(tile_size, overlap, f, "the VAE's factor: tiles start and end on latent pixels")?;
        if tile_size == 0 || overlap * 2 >= tile_size {
            return Err(NodeError::new(format!(
                "param \"overlap\": {overlap} must be less than half of tile_size {tile_size} (the tiles of \
                 tile_size / 2 must advance)"
            )));
        }
        let (h, w) = (img.height / f * f, img.width / f * f);
        if h == 0 || w == 0 {
            return Err(NodeError::new(format!("image {}x{} is smaller than {f} pixels", img.width, img.height)));
        }
        if img.channels == 0 {
            return Err(NodeError::new("input \"pixels\" has no colour channels"));
        }
        // Other tile sizes (for the hint) must pass the same checks.
        let passes_for = |ts: usize| {
            let passes = encode_passes(ts, overlap).to_vec();
            (overlap * 2 < ts && ts.is_multiple_of(2 * f)).then_some(())?;
            total_tiles(h, w, &passes).map(|_| passes)
        };
        let passes = passes_for(tile_size).ok_or_else(|| NodeError::new("tiles do not advance"))?;
        let total = total_tiles(h, w, &passes).unwrap_or(0);
        let limit = activation_limit(gpu, self.1.vae_tile_bytes);
        let peak = |th: usize, tw: usize| encoder_peak_bytes(cfg, dtype, th, tw);
        check_tiles_fit(&passes_for, tile_size, (2 * f).max(64), (h, w), &peak, limit)?;
        let total = (total * img.batch) as u64;
        let lat = cfg.latent_channels;
        let mut samples = Vec::with_capacity(img.batch * lat * (h / f) * (w / f));
        let mut done = 0;
        for b in 0..img.batch {
            cancelled(ctx)?;
            let chw = vae_input(&img, b, h, w);
            let node = ctx.node_id;
            let mut on_tile = || {
                done += 1;
                ctx.progress.step(node, done, total, "tiles");
                cancelled(ctx)
            };
            samples.extend(encode_tiled(gpu, &vae.vae, &chw, (h, w), &passes, &mut on_tile)?);
        }
        let shape = [img.batch, lat, h / f, w / f];
        Ok(vec![Value::payload(Latent { shape, samples, noise_mask: None })])
    }
}
