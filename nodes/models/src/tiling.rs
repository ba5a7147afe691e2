//! The one tiler: a picture (or latent) is cut into overlapping tiles, each
//! tile runs through a network alone, and the outputs are blended with
//! separable weights, so the GPU holds one tile's activations whatever the
//! picture's size. The VAE passes (`vae_tiling`) and the upscalers
//! (`upscale_tiling`) both run through [`blend_tiles`]; they differ only in
//! where the tiles go and how their weights ramp, which each states as
//! [`AxisTiles`]:
//!
//! - [`AxisTiles::comfy`]: ComfyUI's `tiled_scale_multidim` (`comfy/utils.py`):
//!   origins `0, tile - overlap, ...` below `len - overlap`, the last cut at
//!   the edge, weights ramping linearly over the overlap at every edge;
//! - [`AxisTiles::even`]: full-size tiles spread evenly with origins on a
//!   pixel-group multiple, weights ramping only across edges shared with a
//!   neighbour and zero over the outer quarter of each overlap (see
//!   [`even_weights`]).
//!
//! Blending: the output is the sum of each tile's output times its 2-D
//! weight (the product of its axes' weights) over the summed weights, in
//! f32; a tile reaching past the output is cut. One tile covering the whole
//! input runs as is, without weights.

/// How output coordinates follow input ones: decoders and upscalers multiply
/// by the factor, encoders divide by it (inputs are multiples of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    Up(usize),
    Down(usize),
}

impl Resample {
    pub fn apply(self, v: usize) -> usize {
        match self {
            Resample::Up(f) => v * f,
            Resample::Down(f) => v / f.max(1),
        }
    }
}

/// The tiles along one axis: each one's (origin, length) in input pixels, and
/// its blend weights along the axis, one per output pixel of the tile.
#[derive(Debug, Clone, PartialEq)]
pub struct AxisTiles {
    pub spans: Vec<(usize, usize)>,
    pub weights: Vec<Vec<f32>>,
}

impl AxisTiles {
    /// ComfyUI's tiles over an axis of `len` input pixels ([`comfy_spans`]),
    /// weighted by [`feather_weights`] over the overlap scaled to the output.
    /// `None` when the tiles would not advance.
    pub fn comfy(len: usize, tile: usize, overlap: usize, scale: Resample) -> Option<AxisTiles> {
        let spans = comfy_spans(len, tile, overlap)?;
        let feather = scale.apply(overlap);
        let weights = spans.iter().map(|&(_, l)| feather_weights(scale.apply(l), feather)).collect();
        Some(AxisTiles { spans, weights })
    }

    /// Full tiles of `tile` pixels at `origins` (from [`even_origins`]), weighted
    /// by [`even_weights`] at `scale` (an upscaler's factor).
    pub fn even(origins: &[usize], tile: usize, scale: usize) -> AxisTiles {
        let weights = (0..origins.len()).map(|k| even_weights(origins, k, tile, scale)).collect();
        AxisTiles { spans: origins.iter().map(|&o| (o, tile)).collect(), weights }
    }
}

/// ComfyUI's tiles along one axis of `size` as (origin, length): one tile
/// when the axis fits, else origins `0, tile - overlap, ...` below
/// `size - overlap`, each cut at the edge. `None` when the tiles would not
/// advance (`tile <= overlap` on an axis longer than a tile).
pub fn comfy_spans(size: usize, tile: usize, overlap: usize) -> Option<Vec<(usize, usize)>> {
    if size <= tile {
        return Some(vec![(0, size)]);
    }
    if tile <= overlap {
        return None;
    }
    Some((0..size - overlap).step_by(tile - overlap).map(|p| (p, tile.min(size - p))).collect())
}

/// ComfyUI's mask along one axis of a tile's output: 1, times `(t + 1) / feather`
/// on the t-th row from either edge (both factors where the ramps cross);
/// no ramp when `feather >= len`.
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

/// Tile origins along an axis of `len` pixels for tiles of `tile` pixels
/// overlapping by at least `overlap`, each origin a multiple of `m`: one tile
/// when the axis fits, else `n = ceil((len - overlap) / (tile - overlap))`
/// origins spread evenly from 0 to `len - tile`. `len` and `tile` are
/// multiples of `m`, `tile >= m`, `overlap < tile`.
pub fn even_origins(len: usize, tile: usize, overlap: usize, m: usize) -> Vec<usize> {
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
/// `origins` (input pixels), `tile` input pixels long, at `scale`. The weight
/// ramps up from each edge shared with a neighbour: 0 over the first quarter
/// of their overlap, linear over the middle half, 1 beyond, so two ramps over
/// an overlap add to exactly 1, and the outermost quarter, where zero padding
/// at the tile's edge corrupts a network's output most, gets no weight.
pub fn even_weights(origins: &[usize], k: usize, tile: usize, scale: usize) -> Vec<f32> {
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

/// The function run on each tile: `[c_in, th, tw]` in, `[c_out, th', tw']`
/// out (both flat, row-major).
pub type TileFn<'a> = dyn FnMut(&[f32], usize, usize) -> Result<Vec<f32>, String> + 'a;

/// An input of `c_in` planes of `h x w` values.
#[derive(Debug, Clone, Copy)]
pub struct Planes<'a> {
    pub data: &'a [f32],
    pub channels: usize,
    pub h: usize,
    pub w: usize,
}

/// Runs `run` on every tile of `input` (`ys` down, `xs` across) and blends
/// the outputs: `[c_out, scale(h), scale(w)]`.
pub fn blend_tiles(
    input: Planes,
    ys: &AxisTiles,
    xs: &AxisTiles,
    scale: Resample,
    c_out: usize,
    run: &mut TileFn<'_>,
) -> Result<Vec<f32>, String> {
    let Planes { data: input, channels: c_in, h, w } = input;
    if input.len() != c_in * h * w || h == 0 || w == 0 {
        return Err(format!("tiled pass: {} values are not a [{c_in}, {h}, {w}] input", input.len()));
    }
    let (oh, ow) = (scale.apply(h), scale.apply(w));
    let check = |out: &[f32], th: usize, tw: usize| {
        if out.len() == c_out * th * tw {
            Ok(())
        } else {
            Err(format!("tiled pass: a tile gave {} values, not [{c_out}, {th}, {tw}]", out.len()))
        }
    };
    // The whole input in one tile: run it as is (no weights).
    if ys.spans == [(0, h)] && xs.spans == [(0, w)] {
        let out = run(input, h, w)?;
        check(&out, oh, ow)?;
        return Ok(out);
    }
    let mut out = vec![0.0f32; c_out * oh * ow];
    let mut wsum = vec![0.0f32; oh * ow];
    let mut crop = Vec::new();
    for (&(y0, ly), wy) in ys.spans.iter().zip(&ys.weights) {
        for (&(x0, lx), wx) in xs.spans.iter().zip(&xs.weights) {
            crop.clear();
            for c in 0..c_in {
                for y in y0..y0 + ly {
                    let row = (c * h + y) * w;
                    crop.extend_from_slice(&input[row + x0..row + x0 + lx]);
                }
            }
            let (th, tw) = (scale.apply(ly), scale.apply(lx));
            let tile = run(&crop, ly, lx)?;
            check(&tile, th, tw)?;
            if wy.len() != th || wx.len() != tw {
                return Err(format!("tiled pass: weights for {}x{} pixels on a {th}x{tw} tile", wy.len(), wx.len()));
            }
            let (oy, ox) = (scale.apply(y0), scale.apply(x0));
            // A tile reaching past the output is cut (as ComfyUI; not the case for exact networks).
            let (th_in, tw_in) = (th.min(oh - oy), tw.min(ow - ox));
            accumulate(&mut out, &mut wsum, &tile, (wy, wx), (th, tw), (th_in, tw_in), (oy, ox), (oh, ow));
        }
    }
    for (i, &ws) in wsum.iter().enumerate() {
        // Every pixel lies where some tile has weight (tested over many sizes); guard anyway.
        if ws <= 0.0 {
            return Err(format!("tiled pass: output pixel {i} got no tile weight (a tiling bug)"));
        }
    }
    for plane in out.chunks_exact_mut(oh * ow) {
        for (v, d) in plane.iter_mut().zip(&wsum) {
            *v /= d;
        }
    }
    Ok(out)
}

/// Adds `tile [c, th, tw]` times its weights into `out [c, oh, ow]` at
/// `(oy, ox)`, over its first `th_in x tw_in` pixels, and the weights into `wsum`.
#[allow(clippy::too_many_arguments)]
fn accumulate(
    out: &mut [f32],
    wsum: &mut [f32],
    tile: &[f32],
    (wy, wx): (&[f32], &[f32]),
    (th, tw): (usize, usize),
    (th_in, tw_in): (usize, usize),
    (oy, ox): (usize, usize),
    (oh, ow): (usize, usize),
) {
    for (y, &my) in wy.iter().enumerate().take(th_in) {
        let row = &mut wsum[(oy + y) * ow + ox..][..tw_in];
        for (d, &mx) in row.iter_mut().zip(wx) {
            *d += my * mx;
        }
    }
    for (c, plane) in out.chunks_exact_mut(oh * ow).enumerate() {
        for (y, &my) in wy.iter().enumerate().take(th_in) {
            let dst = &mut plane[(oy + y) * ow + ox..][..tw_in];
            let src = &tile[(c * th + y) * tw..][..tw_in];
            for ((o, &p), &mx) in dst.iter_mut().zip(src).zip(wx) {
                let wgt = my * mx;
                // Skipped rather than added as 0 * p, so a non-finite value where a tile has no say stays out.
                if wgt != 0.0 {
                    *o += p * wgt;
                }
            }
        }
    }
}

/// `values` unchanged when every one is finite; else an error naming `what` (a network's output), the
/// first bad value and where, and the likely cause: NaN or infinite weights in the file.
pub fn finite(values: Vec<f32>, what: &str) -> Result<Vec<f32>, String> {
    match values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        None => Ok(values),
        Some((i, v)) => Err(format!(
            "{what} is {v} at element {i}, so the picture would come out black or broken: the model file holds \
             NaN or infinite weights (a corrupt or badly merged file), or its input did"
        )),
    }
}

/// What the GPU may hold in one activation: the adapter's `limit`, or less
/// when `wanted` (a setting) says so.
pub fn activation_limit(adapter: u64, wanted: Option<u64>) -> u64 {
    wanted.map_or(adapter, |v| v.min(adapter))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_origins_cover_the_axis_with_full_tiles_and_at_least_the_overlap() {
        for m in [1, 2, 4] {
            for len in (m..300).step_by(m) {
                for tile in [m, 8, 16, 24, 32, 64].map(|t: usize| (t / m * m).max(m)) {
                    for overlap in [0, 4, 8, 12].map(|o: usize| o.min(tile / 2) / m * m) {
                        let t = tile.min(len);
                        let o = overlap.min(t / 2) / m * m;
                        let ys = even_origins(len, t, o, m);
                        assert_eq!(ys.first(), Some(&0));
                        assert_eq!(ys.last().unwrap() + t, len, "{len} {tile} {overlap}");
                        for win in ys.windows(2) {
                            assert!(win[1] > win[0] && win[0] + t >= win[1] + o, "{len} {tile} {overlap}: {ys:?}");
                        }
                        assert!(ys.iter().all(|y| y % m == 0));
                        // Every output pixel gets weight from some tile.
                        let s = 2;
                        let mut sum = vec![0.0f32; len * s];
                        for k in 0..ys.len() {
                            for (i, wv) in even_weights(&ys, k, t, s).iter().enumerate() {
                                sum[ys[k] * s + i] += wv;
                            }
                        }
                        assert!(sum.iter().all(|&v| v > 0.0), "{len} {tile} {overlap} {m}: {ys:?} {sum:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn two_even_tiles_blend_as_a_partition_of_unity() {
        // 40 pixels, tiles of 24 overlapping by 8: origins 0 and 16.
        let ys = even_origins(40, 24, 8, 1);
        assert_eq!(ys, [0, 16]);
        let a = even_weights(&ys, 0, 24, 1);
        let b = even_weights(&ys, 1, 24, 1);
        for i in 16..24 {
            assert!((a[i] + b[i - 16] - 1.0).abs() < 1e-6, "{i}");
        }
        // The outer quarter of the overlap (2 px) takes only the tile that is far from its edge.
        assert_eq!(&a[22..24], &[0.0, 0.0]);
        assert_eq!(&b[0..2], &[0.0, 0.0]);
        assert_eq!(a[..16], [1.0; 16]);
    }

    #[test]
    fn both_layouts_blend_a_pixelwise_function_exactly() {
        // Nearest 2x up then 3x + 1: tiled equals whole with either layout.
        let (h, w) = (7, 19);
        let input: Vec<f32> = (0..h * w).map(|i| (i * 37 % 11) as f32 - 5.0).collect();
        let mut up = |x: &[f32], th: usize, tw: usize| -> Result<Vec<f32>, String> {
            Ok((0..4 * th * tw).map(|i| 3.0 * x[(i / (2 * tw)) / 2 * tw + (i % (2 * tw)) / 2] + 1.0).collect())
        };
        let planes = Planes { data: &input, channels: 1, h, w };
        let whole = up(&input, h, w).unwrap();
        let comfy = (AxisTiles::comfy(h, 4, 1, Resample::Up(2)).unwrap(), AxisTiles::comfy(w, 6, 2, Resample::Up(2)));
        let tiled = blend_tiles(planes, &comfy.0, &comfy.1.unwrap(), Resample::Up(2), 1, &mut up).unwrap();
        assert!(tiled.iter().zip(&whole).all(|(a, b)| (a - b).abs() < 1e-5));
        let (ey, ex) =
            (AxisTiles::even(&even_origins(h, 4, 2, 1), 4, 2), AxisTiles::even(&even_origins(w, 8, 4, 1), 8, 2));
        let tiled = blend_tiles(planes, &ey, &ex, Resample::Up(2), 1, &mut up).unwrap();
        assert!(tiled.iter().zip(&whole).all(|(a, b)| (a - b).abs() < 1e-5));
    }
}
