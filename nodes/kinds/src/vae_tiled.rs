//! VAEDecodeTiled and VAEEncodeTiled, as ComfyUI's nodes: thin adapters over
//! [`models::vae_tiling`], which holds the passes, the blending (on the one
//! tiler, [`models::tiling`]) and what differs from ComfyUI. The nodes check
//! their params and that the tiles fit the adapter, then run the passes item
//! by item with progress and cancellation.

use std::sync::Arc;

use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{Image, PortType, Value};

use models::image_ops::planes::{push_vae_output, vae_input};
use models::tiling::activation_limit;
use models::vae_tiling::TILE_BYTES_ENV;
use models::vae_tiling::{
    TilePass, adapter_limit, decode_passes, decode_tiled, decoder_peak_bytes, encode_passes, encode_tiled,
    encoder_peak_bytes, mib, pass_tiles,
};

use crate::payload::{Latent, VaeHandle};
use crate::runtime;
use crate::settings::Settings;

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
fn param_in(name: &str, v: usize, (min, max): (usize, usize)) -> Result<usize, NodeError> {
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

graph::node_fields! {
    struct DecodeTiledFields {
        samples: Arc<Latent> = input(PortType::Latent, "The latents."),
        vae: Arc<VaeHandle> = input(PortType::Vae, "The VAE (from CheckpointLoaderSimple)."),
        tile_size: usize = int(
            TILE_RANGE.0 as i64,
            TILE_RANGE.1 as i64,
            512,
            "Tile side in pixels; a multiple of the VAE's factor (8 for SD).",
        ),
        overlap: usize = int(
            OVERLAP_RANGE.0 as i64,
            OVERLAP_RANGE.1 as i64,
            64,
            "Pixels neighbouring tiles share (blended); a multiple of the factor; over tile_size / 4 becomes that.",
        ),
    }
}

impl VaeDecodeTiled {
    pub fn new(settings: Settings) -> Self {
        Self(
            NodeSchema::new(
                "VAEDecodeTiled",
                "latent",
                "Decodes latents tile by tile (ComfyUI's three averaged passes), so the GPU holds one tile's \
                 activations at a time.",
            )
            .fields(DecodeTiledFields::declare)
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
        let f = DecodeTiledFields::read(inputs)?;
        let vae = f.vae;
        let latent = f.samples;
        let tile_size = param_in("tile_size", f.tile_size, TILE_RANGE)?;
        let overlap = param_in("overlap", f.overlap, OVERLAP_RANGE)?;
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
        let limit = activation_limit(adapter_limit(gpu), self.1.vae_tile_bytes);
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
                cancelled(ctx).map_err(|e| e.message)
            };
            let px = decode_tiled(gpu, &vae.vae, item, (h, w), &passes, &mut on_tile).map_err(NodeError::new)?;
            push_vae_output(&mut data, &px, cfg.out_channels, h * f, w * f);
        }
        let image = graph::Image::from_data(b, h * f, w * f, 3, data)
            .ok_or_else(|| NodeError::new("decoded images differ in size"))?;
        Ok(vec![Value::Image(Arc::new(image))])
    }
}

/// The schema, and the settings the command passed.
pub struct VaeEncodeTiled(NodeSchema, Settings);

graph::node_fields! {
    struct EncodeTiledFields {
        pixels: Arc<Image> = input(PortType::Image, "The pictures."),
        vae: Arc<VaeHandle> = input(PortType::Vae, "The VAE (from CheckpointLoaderSimple)."),
        tile_size: usize = int(
            TILE_RANGE.0 as i64,
            TILE_RANGE.1 as i64,
            512,
            "Tile side in pixels; a multiple of twice the VAE's factor (16 for SD).",
        ),
        overlap: usize = int(
            OVERLAP_RANGE.0 as i64,
            OVERLAP_RANGE.1 as i64,
            64,
            "Pixels neighbouring tiles share (blended); a multiple of the factor, under tile_size / 2.",
        ),
    }
}

impl VaeEncodeTiled {
    pub fn new(settings: Settings) -> Self {
        Self(
            NodeSchema::new(
                "VAEEncodeTiled",
                "latent",
                "Encodes pictures tile by tile (ComfyUI's three averaged passes; cropped to a multiple of 8 pixels, \
                 centred, as VAEEncode).",
            )
            .fields(EncodeTiledFields::declare)
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
        let f = EncodeTiledFields::read(inputs)?;
        let vae = f.vae;
        let img = f.pixels;
        let tile_size = param_in("tile_size", f.tile_size, TILE_RANGE)?;
        let overlap = param_in("overlap", f.overlap, OVERLAP_RANGE)?;
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
        let limit = activation_limit(adapter_limit(gpu), self.1.vae_tile_bytes);
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
                cancelled(ctx).map_err(|e| e.message)
            };
            samples.extend(encode_tiled(gpu, &vae.vae, &chw, (h, w), &passes, &mut on_tile).map_err(NodeError::new)?);
        }
        let shape = [img.batch, lat, h / f, w / f];
        Ok(vec![Value::payload(Latent { shape, samples, noise_mask: None, batch_index: None })])
    }
}
