//! Tiled upscaling: an image is cut into overlapping tiles, each tile runs
//! through the model alone, and the outputs are blended with feathered
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

use gpu::{DType, Gpu};
use graph::node::NodeError;
use graph::node::err;

use models::upscaler::UpscaleModel;

/// Tile origins along an axis of `len` pixels for tiles of `tile` pixels
/// overlapping by at least `overlap`, each origin a multiple of `m`. `len`
/// and `tile` are multiples of `m`, `tile >= m`, `overlap < tile`.
pub fn axis_origins(len: usize, tile: usize, overlap: usize, m: usize) -> Vec<usize> {
    if len <= tile {
        return vec![0];
    }
    let n = (len - overlap).div_ceil(tile - overlap);
    let span = len - tile;
    // Spread evenly, floored to the multiple; the last lands exactly on len - tile.
    (0..n).map(|i| span * i / (n - 1) / m * m).collect()
}

/// The weight ramp from an edge shared with a neighbour: `d` output pixels
/// (pixel centre) from the edge, the two tiles overlapping by `o` output pixels.
fn ramp(d: f32, o: f32) -> f32 {
    if o <= 0.0 { 1.0 } else { ((d - o / 4.0) / (o / 2.0)).clamp(0.0, 1.0) }
}

/// A tile's blend weights along one axis, in output pixels: tile `k` of
/// `origins` (input pixels), `tile` input pixels long, at `scale`.
pub fn axis_weights(origins: &[usize], k: usize, tile: usize, scale: usize) -> Vec<f32> {
    let len = tile * scale;
    let prev = k.checked_sub(1).map(|p| (origins[p] + tile).saturating_sub(origins[k]) * scale);
    let next = origins.get(k + 1).map(|&n| (origins[k] + tile).saturating_sub(n) * scale);
    (0..len)
        .map(|i| {
            let left = prev.map_or(1.0, |o| ramp(i as f32 + 0.5, o as f32));
            let right = next.map_or(1.0, |o| ramp((len - i) as f32 - 0.5, o as f32));
            left * right
        })
        .collect()
}

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
            (t, axis_origins(len, t, o, m))
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
    on_tile: &mut dyn FnMut() -> Result<(), NodeError>,
) -> Result<Vec<f32>, NodeError> {
    let (cin, cout, s, m) = (model.in_channels(), model.out_channels(), model.scale(), model.size_multiple());
    let (hp, wp) = (h.div_ceil(m) * m, w.div_ceil(m) * m);
    if chw.len() != cin * h * w {
        return Err(NodeError::new(format!("upscale: {} values for a {cin}x{h}x{w} picture", chw.len())));
    }
    let (th, tw) = (plan.tile_h, plan.tile_w);
    let (oh, ow) = (hp * s, wp * s);
    let single = plan.count() == 1;
    let mut out = vec![0.0f32; cout * oh * ow];
    let mut wsum = if single { Vec::new() } else { vec![0.0f32; oh * ow] };
    let mut tile = vec![0.0f32; cin * th * tw];
    for (ky, &y0) in plan.ys.iter().enumerate() {
        let wy = axis_weights(&plan.ys, ky, th, s);
        for (kx, &x0) in plan.xs.iter().enumerate() {
            // The tile's input; rows and columns past the picture (padding to
            // the size multiple) mirror it, as spandrel's reflect padding.
            for c in 0..cin {
                for y in 0..th {
                    let sy = reflect(y0 + y, h);
                    for x in 0..tw {
                        let sx = reflect(x0 + x, w);
                        tile[(c * th + y) * tw + x] = chw[(c * h + sy) * w + sx];
                    }
                }
            }
            let t = gpu.upload(&tile, &[1, cin, th, tw], model.dtype).map_err(err)?;
            let y = model.forward(gpu, &t).map_err(err)?;
            if y.shape() != [1, cout, th * s, tw * s] {
                return Err(NodeError::new(format!(
                    "the upscale model returned {:?} for a {th}x{tw} tile, expected [1, {cout}, {}, {}]",
                    y.shape(),
                    th * s,
                    tw * s
                )));
            }
            let px = gpu.download(&y).map_err(err)?;
            drop((t, y));
            let (ph, pw) = (th * s, tw * s);
            if single {
                out = px;
            } else {
                let wx = axis_weights(&plan.xs, kx, tw, s);
                for yy in 0..ph {
                    let row = (y0 * s + yy) * ow + x0 * s;
                    for xx in 0..pw {
                        let wgt = wy[yy] * wx[xx];
                        if wgt == 0.0 {
                            continue;
                        }
                        wsum[row + xx] += wgt;
                        for c in 0..cout {
                            out[c * oh * ow + row + xx] += wgt * px[(c * ph + yy) * pw + xx];
                        }
                    }
                }
            }
            on_tile()?;
        }
    }
    if !single {
        for (i, &ws) in wsum.iter().enumerate() {
            // Every pixel lies where some tile has weight (tested over many sizes); guard anyway.
            if ws <= 0.0 {
                return Err(NodeError::new(format!("upscale: output pixel {i} got no tile weight (a tiling bug)")));
            }
            for c in 0..cout {
                out[c * oh * ow + i] /= ws;
            }
        }
    }
    // Crop the padding away.
    if (hp, wp) != (h, w) {
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

/// What the GPU may hold in one activation: the adapter's largest buffer,
/// or less when `wanted` (`SDGRAPH_UPSCALE_TILE_BYTES`) says so.
pub fn activation_limit(gpu: &Gpu, wanted: Option<u64>) -> u64 {
    let adapter = gpu.limits.max_buffer_size;
    wanted.map_or(adapter, |v| v.min(adapter))
}

/// Storage type names for messages.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F16 => "f16",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_cover_the_axis_with_full_tiles_and_at_least_the_overlap() {
        for m in [1, 2, 4] {
            for len in (m..300).step_by(m) {
                for tile in [m, 8, 16, 24, 32, 64].map(|t: usize| (t / m * m).max(m)) {
                    for overlap in [0, 4, 8, 12].map(|o: usize| o.min(tile / 2) / m * m) {
                        let p = TilePlan::new(len, len, tile, overlap, m);
                        let t = p.tile_h;
                        let o = p.ys.first().map(|_| overlap.min(t / 2) / m * m).unwrap_or(0);
                        assert_eq!(p.ys.first(), Some(&0));
                        assert_eq!(p.ys.last().unwrap() + t, len, "{len} {tile} {overlap}");
                        for win in p.ys.windows(2) {
                            assert!(win[1] > win[0] && win[0] + t >= win[1] + o, "{len} {tile} {overlap}: {:?}", p.ys);
                        }
                        assert!(p.ys.iter().all(|y| y % m == 0));
                        // Every output pixel gets weight from some tile.
                        let s = 2;
                        let mut sum = vec![0.0f32; len * s];
                        for k in 0..p.ys.len() {
                            for (i, wv) in axis_weights(&p.ys, k, t, s).iter().enumerate() {
                                sum[p.ys[k] * s + i] += wv;
                            }
                        }
                        assert!(sum.iter().all(|&v| v > 0.0), "{len} {tile} {overlap} {m}: {:?} {sum:?}", p.ys);
                    }
                }
            }
        }
    }

    #[test]
    fn two_tiles_blend_as_a_partition_of_unity() {
        // 40 pixels, tiles of 24 overlapping by 8: origins 0 and 16.
        let ys = axis_origins(40, 24, 8, 1);
        assert_eq!(ys, [0, 16]);
        let a = axis_weights(&ys, 0, 24, 1);
        let b = axis_weights(&ys, 1, 24, 1);
        for i in 16..24 {
            assert!((a[i] + b[i - 16] - 1.0).abs() < 1e-6, "{i}");
        }
        // The outer quarter of the overlap (2 px) takes only the tile that is far from its edge.
        assert_eq!(&a[22..24], &[0.0, 0.0]);
        assert_eq!(&b[0..2], &[0.0, 0.0]);
        assert_eq!(a[..16], [1.0; 16]);
    }
}
