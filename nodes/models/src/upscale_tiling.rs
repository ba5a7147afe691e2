//! Tiled upscaling on the one tiler ([`crate::tiling`]): an image is cut into overlapping
//! tiles, each tile runs through the model alone, and the outputs are blended with feathered
//! weights, so the GPU holds one tile's activations whatever the image size
//! (a 4096x4096 output from 512x512 tiles of Real-ESRGAN x4plus needs the
//! activations of one 2048x2048 tile: 64 features, 512 MiB each in f16).
//!
//! Tiles (like ComfyUI's `tiled_scale`, not identical to it): along each
//! axis, one tile when the axis fits, else `n = ceil((len - overlap) /
//! (tile - overlap))` tiles of exactly `tile` pixels with origins spread
//! evenly from 0 to `len - tile`, so neighbours overlap by at least
//! `overlap` and every tile has the full size (ComfyUI's last tile is cut
//! short at the edge instead). Origins, tile and overlap are multiples of
//! the model's pixel-unshuffle factor, so each tile unshuffles the same
//! pixel groups as the whole image would.
//!
//! Blending: a tile's weight along an axis ramps up from each edge it shares
//! with a neighbour: 0 over the first quarter of their overlap, linear over
//! the middle half, 1 beyond; the 2-D weight is the product of the two axes'
//! and the output is the weighted sum over the summed weights. Where two
//! tiles overlap by `o` the two ramps add to exactly 1, so the blend is a
//! partition of unity. Unlike ComfyUI's ramp (from the very edge), the
//! outermost quarter of each overlap, where zero padding at the tile's edge
//! corrupts the model's output most, gets no weight at all: a model that
//! sees at most `overlap / 4` input pixels around each output pixel gives
//! the same result tiled as whole (tested). Output values are clamped to
//! 0..1 after blending, as ComfyUI's ImageUpscaleWithModel does.
//!
//! A picture whose sides are not multiples of the unshuffle factor (2 for
//! Real-ESRGAN x2plus) is padded by reflection at the bottom and right, and
//! the output cropped, as spandrel's ESRGAN does.

use std::borrow::Cow;

use gpu::{DType, Gpu};

use crate::tiling::{AxisTiles, Planes, Resample, blend_tiles, even_origins, finite};
use crate::upscaler::UpscaleModel;

/// How an image is cut: tile height and width (input pixels), origins per axis.
#[derive(Debug, Clone, PartialEq)]
pub struct TilePlan {
    pub tile_h: usize,
    pub tile_w: usize,
    pub ys: Vec<usize>,
    pub xs: Vec<usize>,
}

impl TilePlan {
    /// Tiles of at most `tile` pixels overlapping by `overlap` over an
    /// `h x w` input (both multiples of `m`); `tile` and `overlap` are
    /// rounded down to multiples of `m`, and `overlap` to at most half a tile.
    pub fn new(h: usize, w: usize, tile: usize, overlap: usize, m: usize) -> TilePlan {
        let t = (tile / m * m).max(m);
        let axis = |len: usize| {
            let t = t.min(len);
            let o = overlap.min(t / 2) / m * m;
            (t, even_origins(len, t, o, m))
        };
        let (tile_h, ys) = axis(h);
        let (tile_w, xs) = axis(w);
        TilePlan { tile_h, tile_w, ys, xs }
    }

    pub fn count(&self) -> usize {
        self.ys.len() * self.xs.len()
    }
}

/// Upscales one picture `chw [in, h, w]` (any size) with `model`, tiled by
/// `plan` (over the picture padded to the model's size multiple), calling
/// `on_tile` after each tile. Returns `[out, h * s, w * s]`, unclamped.
pub fn upscale_tiled(
    gpu: &Gpu,
    model: &UpscaleModel,
    chw: &[f32],
    (h, w): (usize, usize),
    plan: &TilePlan,
    on_tile: &mut dyn FnMut() -> Result<(), String>,
) -> Result<Vec<f32>, String> {
    let (cin, cout, s, m) = (model.in_channels(), model.out_channels(), model.scale(), model.size_multiple());
    let (hp, wp) = (h.div_ceil(m) * m, w.div_ceil(m) * m);
    if chw.len() != cin * h * w {
        return Err(format!("upscale: {} values for a {cin}x{h}x{w} picture", chw.len()));
    }
    // Rows and columns past the picture (padding to the size multiple) mirror
    // it, as spandrel's reflect padding.
    // The picture itself when it needs no padding (no copy of the whole input).
    let padded: Cow<[f32]> = if (hp, wp) == (h, w) {
        Cow::Borrowed(chw)
    } else {
        let mut p = Vec::with_capacity(cin * hp * wp);
        for c in 0..cin {
            for y in 0..hp {
                let row = (c * h + reflect(y, h)) * w;
                p.extend((0..wp).map(|x| chw[row + reflect(x, w)]));
            }
        }
        Cow::Owned(p)
    };
    let mut run = |tile: &[f32], th: usize, tw: usize| -> Result<Vec<f32>, String> {
        let t = gpu.upload(tile, &[1, cin, th, tw], model.dtype).map_err(|e| e.to_string())?;
        let y = model.forward(gpu, &t).map_err(|e| e.to_string())?;
        if y.shape() != [1, cout, th * s, tw * s] {
            return Err(format!(
                "the upscale model returned {:?} for a {th}x{tw} tile, expected [1, {cout}, {}, {}]",
                y.shape(),
                th * s,
                tw * s
            ));
        }
        let px = gpu.download(&y).map_err(|e| e.to_string())?;
        drop((t, y));
        on_tile()?;
        Ok(px)
    };
    let ys = AxisTiles::even(&plan.ys, plan.tile_h, s);
    let xs = AxisTiles::even(&plan.xs, plan.tile_w, s);
    let planes = Planes { data: &padded, channels: cin, h: hp, w: wp };
    let mut out =
        finite(blend_tiles(planes, &ys, &xs, Resample::Up(s), cout, &mut run)?, "the upscale model's output")?;
    // Crop the padding away.
    if (hp, wp) != (h, w) {
        let (oh, ow) = (hp * s, wp * s);
        let (fh, fw) = (h * s, w * s);
        let mut cropped = Vec::with_capacity(cout * fh * fw);
        for c in 0..cout {
            for y in 0..fh {
                let row = c * oh * ow + y * ow;
                cropped.extend_from_slice(&out[row..row + fw]);
            }
        }
        out = cropped;
    }
    Ok(out)
}

/// Index `i` of an axis of `len`, mirrored at the far end (`F.pad(mode="reflect")`:
/// `len` maps to `len - 2`); repeats the last pixel where the axis is too short to mirror.
fn reflect(i: usize, len: usize) -> usize {
    if i < len { i } else { (2 * (len - 1)).checked_sub(i).unwrap_or(len - 1).min(len - 1) }
}

/// The largest tile side (halving `tile` from the request, down to the
/// size multiple) whose largest activation fits in `limit` bytes, or
/// `None` if not even the smallest does.
pub fn fitting_tile(model: &UpscaleModel, tile: usize, (h, w): (usize, usize), limit: u64) -> Option<usize> {
    let m = model.size_multiple();
    let mut t = tile.max(m);
    loop {
        let (th, tw) = (t.min(h.div_ceil(m) * m), t.min(w.div_ceil(m) * m));
        if model.largest_activation(th, tw) <= limit {
            return Some(t);
        }
        if t <= m {
            return None;
        }
        t = (t / 2 / m * m).max(m);
    }
}

/// Storage type names for messages.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
    }
}
