//! Tiled VAE passes on the one tiler ([`crate::tiling`]): ComfyUI's three
//! averaged passes (VAEDecodeTiled, VAEEncodeTiled) and the single pass
//! VAEDecode and VAEEncode fall back to when one activation of the
//! full-size pass would not fit the adapter.
//!
//! ComfyUI (github.com/Comfy-Org/ComfyUI):
//! `nodes.py`@5aabaf5171541aa26738d53f9d1f91c1b3e3497a (`VAEDecodeTiled`,
//! `VAEEncodeTiled`), `comfy/sd.py`@35ead008b9f8b0928fb0b674e97923d3ebd57be3
//! (`VAE.decode_tiled_`, `VAE.encode_tiled_`, the fallback in `VAE.decode` /
//! `VAE.encode`), `comfy/utils.py`@b3be02d6e766a8d3743dcf99cc967118f3ec8e3e
//! (`tiled_scale_multidim`).
//!
//! As ComfyUI: a tiled pass ([`tiled_scale`], [`AxisTiles::comfy`]) cuts the input into tiles at
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

use gpu::{DType, Gpu};

use crate::tiling::{AxisTiles, Planes, Resample, TileFn, blend_tiles, comfy_spans, finite};
use crate::vae::{Vae, VaeConfig};

/// The environment variable the command reads into the VAE tile limit: the
/// largest activation, in bytes, a VAE pass may make before VAEDecode /
/// VAEEncode tile it (it can only lower the adapter's own limit). Named in messages.
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

/// Tiles a pass over an `h x w` input runs (one when the input fits a tile).
pub fn pass_tiles(h: usize, w: usize, pass: &TilePass) -> Option<usize> {
    if h <= pass.tile_h && w <= pass.tile_w {
        return Some(1);
    }
    Some(comfy_spans(h, pass.tile_h, pass.overlap)?.len() * comfy_spans(w, pass.tile_w, pass.overlap)?.len())
}

/// ComfyUI's `tiled_scale_multidim` over one `[c_in, h, w]` item: the
/// feathered, weight-normalised blend of `run` on every tile, `[c_out,
/// h', w']` with `h' = scale(h)`.
pub fn tiled_scale(
    input: Planes,
    pass: &TilePass,
    scale: Resample,
    c_out: usize,
    run: &mut TileFn<'_>,
) -> Result<Vec<f32>, String> {
    let (h, w) = (input.h, input.w);
    let axis = |size: usize, tile: usize| {
        AxisTiles::comfy(size, tile, pass.overlap, scale).ok_or_else(|| {
            format!(
                "tiles of {}x{} with overlap {} do not advance over a {w}x{h} input",
                pass.tile_w, pass.tile_h, pass.overlap
            )
        })
    };
    let (ys, xs) = (axis(h, pass.tile_h)?, axis(w, pass.tile_w)?);
    blend_tiles(input, &ys, &xs, scale, c_out, run)
}

/// Runs every pass and averages them: `((p0 + p1) + p2) / 3` in f32, as
/// ComfyUI sums its passes; one pass is returned as is.
pub fn run_passes(
    input: Planes,
    passes: &[TilePass],
    scale: Resample,
    c_out: usize,
    run: &mut TileFn<'_>,
) -> Result<Vec<f32>, String> {
    let mut acc: Option<Vec<f32>> = None;
    for pass in passes {
        let out = tiled_scale(input, pass, scale, c_out, run)?;
        acc = Some(match acc {
            None => out,
            Some(mut a) => {
                a.iter_mut().zip(&out).for_each(|(a, o)| *a += o);
                a
            }
        });
    }
    let mut acc = acc.ok_or_else(|| "tiled pass: no passes".to_string())?;
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
    on_tile: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Vec<f32>, String> {
    let cfg = &vae.config;
    let c = cfg.latent_channels;
    let mut run = |tile: &[f32], th: usize, tw: usize| -> Result<Vec<f32>, String> {
        let z = gpu.upload(tile, &[1, c, th, tw], DType::F32).map_err(|e| e.to_string())?;
        let img = vae.image_from_latent(gpu, &z).map_err(|e| e.to_string())?;
        // Reading back waits for the tile, so the next one reuses its buffers.
        let out = gpu.download(&img).map_err(|e| e.to_string())?;
        on_tile()?;
        Ok(out)
    };
    let f = cfg.downsample_factor();
    let out =
        run_passes(Planes { data: item, channels: c, h, w }, passes, Resample::Up(f), cfg.out_channels, &mut run)?;
    finite(out, "the VAE decoder's output")
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
    on_tile: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Vec<f32>, String> {
    let cfg = &vae.config;
    let cin = cfg.in_channels;
    let mut run = |tile: &[f32], th: usize, tw: usize| -> Result<Vec<f32>, String> {
        let x = gpu.upload(tile, &[1, cin, th, tw], DType::F32).map_err(|e| e.to_string())?;
        let z = vae.latent_from_image(gpu, &x).map_err(|e| e.to_string())?;
        let out = gpu.download(&z).map_err(|e| e.to_string())?;
        on_tile()?;
        Ok(out)
    };
    let f = cfg.downsample_factor();
    let planes = Planes { data: pixels, channels: cin, h, w };
    let out = run_passes(planes, passes, Resample::Down(f), cfg.latent_channels, &mut run)?;
    finite(out, "the VAE encoder's output")
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

/// The largest activation a VAE pass may make on this adapter: what one
/// storage binding and one buffer hold (the tile limit setting may lower it,
/// [`crate::tiling::activation_limit`]).
pub fn adapter_limit(gpu: &Gpu) -> u64 {
    gpu.limits.max_storage_buffer_binding_size.min(gpu.limits.max_buffer_size)
}

/// Bytes as MiB, for messages.
pub fn mib(b: u64) -> String {
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
        let (Some(ys), Some(xs)) = (comfy_spans(hu, th, o), comfy_spans(wu, tw, o)) else { continue };
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
pub fn decode_plan(vae: &Vae, h: usize, w: usize, limit: u64) -> Result<Option<(TilePass, String)>, String> {
    let (cfg, dtype) = (&vae.config, vae.dtype);
    let f = cfg.downsample_factor();
    let peak = decoder_peak_bytes(cfg, dtype, h, w);
    if peak <= limit {
        return Ok(None);
    }
    let fits = |th: usize, tw: usize| decoder_peak_bytes(cfg, dtype, th, tw) <= limit;
    let pass = plan_fallback(h, w, 1, FALLBACK_DECODE_OVERLAP, &fits).ok_or_else(|| {
        format!(
            "a {}x{} decode needs a {} activation; not even a 1x1 latent tile fits the {} limit",
            w * f,
            h * f,
            mib(peak),
            mib(limit)
        )
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
pub fn encode_plan(vae: &Vae, h: usize, w: usize, limit: u64) -> Result<Option<(TilePass, String)>, String> {
    let (cfg, dtype) = (&vae.config, vae.dtype);
    let f = cfg.downsample_factor();
    let peak = encoder_peak_bytes(cfg, dtype, h, w);
    if peak <= limit {
        return Ok(None);
    }
    let fits = |th: usize, tw: usize| encoder_peak_bytes(cfg, dtype, th, tw) <= limit;
    let pass = plan_fallback(h, w, f, FALLBACK_ENCODE_OVERLAP_LATENT * f, &fits).ok_or_else(|| {
        format!(
            "a {w}x{h} encode needs a {} activation; not even a {f}x{f} tile fits the {} limit",
            mib(peak),
            mib(limit)
        )
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

/// Decodes one scaled latent `[C, h, w]` to the raw decoder output `[out,
/// h * f, w * f]`: whole, or in the tiles of `pass` (from [`decode_plan`]),
/// calling `on_tile` after each.
pub fn decode_item(
    gpu: &Gpu,
    vae: &Vae,
    item: &[f32],
    (h, w): (usize, usize),
    pass: Option<&TilePass>,
    on_tile: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Vec<f32>, String> {
    if let Some(pass) = pass {
        return decode_tiled(gpu, vae, item, (h, w), std::slice::from_ref(pass), on_tile);
    }
    let f = vae.config.downsample_factor();
    let (oh, ow) = (h * f, w * f);
    let z = gpu.upload(item, &[1, vae.config.latent_channels, h, w], DType::F32).map_err(|e| e.to_string())?;
    let img = vae.image_from_latent(gpu, &z).map_err(|e| e.to_string())?;
    if img.shape()[2..] != [oh, ow] {
        return Err(format!("the VAE decoded {:?}, not {oh}x{ow}", img.shape()));
    }
    finite(gpu.download(&img).map_err(|e| e.to_string())?, "the VAE decoder's output")
}

/// Encodes one picture `[3, h, w]` in -1..1 to the scaled latent `[C, h / f,
/// w / f]`: whole, or in the tiles of `pass` (from [`encode_plan`]), calling
/// `on_tile` after each.
pub fn encode_item(
    gpu: &Gpu,
    vae: &Vae,
    chw: &[f32],
    (h, w): (usize, usize),
    pass: Option<&TilePass>,
    on_tile: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Vec<f32>, String> {
    if let Some(pass) = pass {
        return encode_tiled(gpu, vae, chw, (h, w), std::slice::from_ref(pass), on_tile);
    }
    let f = vae.config.downsample_factor();
    let want = [vae.config.latent_channels, h / f, w / f];
    let t = gpu.upload(chw, &[1, 3, h, w], DType::F32).map_err(|e| e.to_string())?;
    let z = vae.latent_from_image(gpu, &t).map_err(|e| e.to_string())?;
    if z.shape()[1..] != want {
        return Err(format!("the VAE encoded {:?}, not {:?}", z.shape(), [1, want[0], want[1], want[2]]));
    }
    finite(gpu.download(&z).map_err(|e| e.to_string())?, "the VAE encoder's output")
}
