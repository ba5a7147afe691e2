//! Data movement, launching `shaders/layout.wgsl` (a strided copy): slice
//! (`torch.narrow`, the pieces of `chunk`), `permute` / `transpose_last2`,
//! `concat` (`torch.cat`), nearest upsampling (`F.interpolate(mode="nearest")`
//! with an integer scale) and `F.pixel_shuffle` / `F.pixel_unshuffle`. All of
//! them are bitwise exact.
//!
//! Also the planner every strided kernel (this one and `binary`) launches
//! through: it merges dims that all operands walk contiguously, then splits
//! the work into windows that each fit one storage binding, so tensors larger
//! than a binding (a VAE decoder's activations on WebGPU-limit adapters) work.

use std::num::NonZeroU64;

use super::super::device::{Gpu, GpuError};
use super::super::launch::{Kernel, grid, word};
use super::super::shaders::ShaderFamily;
use super::super::tensor::Tensor;

/// Most dims a strided kernel takes, after merging.
pub const MAX_DIMS: usize = 6;

/// Workgroup size of the strided kernels (`WG` in the shaders).
pub(crate) const WG: u32 = 256;

/// More launches than this for one op means dims too large to window sensibly.
const MAX_PIECES: usize = 4096;

/// Elements per launch: keeps the shader's u32 thread index from wrapping.
const MAX_PIECE_ELEMS: usize = 1 << 31;

/// How a strided kernel walks one tensor: the element offset of the
/// iteration's origin and the step per iteration dim (0 broadcasts).
#[derive(Debug, Clone)]
pub(crate) struct Strided<'a> {
    pub tensor: &'a Tensor,
    pub offset: usize,
    pub strides: Vec<usize>,
}

crate::kernel_params! {
    /// `Params` of `shaders/lib/strided.wgsl`, which `shaders/layout.wgsl` and
    /// `shaders/binary.wgsl` share: `n` elements over `rank` dims (`n0..`,
    /// innermost first), the two strided operands' element offsets in their
    /// windows (`x_off`, `y_off`) and strides (`s0..`, `t0..`); a contiguous
    /// output's offset `out_off` and `alpha`, which only the binary ops use.
    pub struct StridedParams {
        pub n: u32,
        pub rank: u32,
        pub x_off: u32,
        pub y_off: u32,
        pub out_off: u32,
        pub alpha: f32,
        pub n0: u32,
        pub n1: u32,
        pub n2: u32,
        pub n3: u32,
        pub n4: u32,
        pub n5: u32,
        pub s0: u32,
        pub s1: u32,
        pub s2: u32,
        pub s3: u32,
        pub s4: u32,
        pub s5: u32,
        pub t0: u32,
        pub t1: u32,
        pub t2: u32,
        pub t3: u32,
        pub t4: u32,
        pub t5: u32,
    }
}

/// One launch of a plan.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Piece {
    /// Iteration dims, innermost first, padded with 1.
    pub dims: [u32; MAX_DIMS],
    /// How many of `dims` are real (at least 1).
    pub rank: u32,
    pub numel: usize,
    /// Per operand: its strides in the same order as `dims`.
    pub strides: Vec<[u32; MAX_DIMS]>,
    /// Per operand: the bound byte range (offset aligned for binding, size a multiple of 4).
    pub windows: Vec<(u64, u64)>,
    /// Per operand: the element offset of the iteration origin inside its window.
    pub offsets: Vec<u32>,
}

impl Piece {
    /// Operand `k`'s binding for this launch.
    pub fn binding<'t>(&self, k: usize, t: &'t Tensor) -> wgpu::BufferBinding<'t> {
        let (offset, size) = self.windows[k];
        wgpu::BufferBinding { buffer: t.buffer(), offset, size: NonZeroU64::new(size) }
    }

    /// The parameter block of this launch: operands 0 and 1 are the strided
    /// ones; `out_off` and `alpha` as [`StridedParams`] says.
    pub fn params(&self, out_off: u32, alpha: f32) -> StridedParams {
        let [n0, n1, n2, n3, n4, n5] = self.dims;
        let [s0, s1, s2, s3, s4, s5] = self.strides[0];
        let [t0, t1, t2, t3, t4, t5] = self.strides[1];
        #[rustfmt::skip]
        let params = StridedParams {
            n: word(self.numel), rank: self.rank, x_off: self.offsets[0], y_off: self.offsets[1], out_off, alpha,
            n0, n1, n2, n3, n4, n5, s0, s1, s2, s3, s4, s5, t0, t1, t2, t3, t4, t5,
        };
        params
    }

    /// The workgroup grid for this launch.
    pub fn groups(&self, gpu: &Gpu) -> [u32; 3] {
        grid((self.numel as u32).div_ceil(WG), gpu.limits.max_compute_workgroups_per_dimension)
    }
}

/// Row-major strides of a contiguous tensor.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// Plans the launches of a strided kernel over `shape` for `ops`, with this
/// adapter's binding limits.
pub(crate) fn plan(gpu: &Gpu, shape: &[usize], ops: &[Strided<'_>]) -> Result<Vec<Piece>, GpuError> {
    let specs: Vec<(usize, &[usize], usize)> =
        ops.iter().map(|o| (o.offset, o.strides.as_slice(), o.tensor.dtype().size())).collect();
    plan_with_limits(
        shape,
        &specs,
        gpu.limits.max_storage_buffer_binding_size,
        gpu.limits.min_storage_buffer_offset_alignment.max(4) as u64,
    )
}

/// One iteration dim: its size and each operand's stride over it.
type Dim = (usize, Vec<usize>);

/// The planner itself, on plain numbers so unit tests can use tiny limits.
/// `ops` are (origin offset, strides, element size) per operand.
pub(crate) fn plan_with_limits(
    shape: &[usize],
    ops: &[(usize, &[usize], usize)],
    max_binding: u64,
    align: u64,
) -> Result<Vec<Piece>, GpuError> {
    if shape.iter().product::<usize>() == 0 {
        return Ok(vec![]);
    }
    let dims = merge_dims(shape, ops)?;
    let (split, chunk) = split_point(&dims, ops, max_binding, align)?;
    let outer: usize = dims[..split].iter().map(|d| d.0).product();
    let count = outer * dims[split].0.div_ceil(chunk);
    if count > MAX_PIECES {
        let bytes = ops.iter().map(|o| (span_all(shape, o.1) * o.2) as u64).max().unwrap_or(0);
        return Err(GpuError::TooLarge {
            bytes,
            limit: max_binding,
            what: "storage binding (as windows of this layout)",
        });
    }
    let mut pieces = Vec::with_capacity(count);
    let mut idx = vec![0usize; split];
    for _ in 0..outer {
        let mut start = 0;
        while start < dims[split].0 {
            let len = chunk.min(dims[split].0 - start);
            pieces.push(piece(&dims, split, &idx, start, len, ops, align));
            start += len;
        }
        // Next outer index (odometer, last dim fastest).
        for d in (0..split).rev() {
            idx[d] += 1;
            if idx[d] < dims[d].0 {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(pieces)
}

/// Merges dims, outermost first: size-1 dims vanish; a dim folds into the one
/// outside it when every operand steps over it contiguously (broadcast dims
/// fold too: 0 == 0 * size).
fn merge_dims(shape: &[usize], ops: &[(usize, &[usize], usize)]) -> Result<Vec<Dim>, GpuError> {
    let mut dims: Vec<Dim> = Vec::new();
    for (d, &size) in shape.iter().enumerate() {
        if size == 1 {
            continue;
        }
        let st: Vec<usize> = ops.iter().map(|o| o.1[d]).collect();
        if let Some((outer, prev)) = dims.last_mut()
            && prev.iter().zip(&st).all(|(&p, &s)| p == s * size)
        {
            *outer *= size;
            *prev = st;
            continue;
        }
        dims.push((size, st));
    }
    if dims.is_empty() {
        dims.push((1, vec![0; ops.len()]));
    }
    if dims.len() > MAX_DIMS {
        let sizes: Vec<usize> = dims.iter().map(|d| d.0).collect();
        return Err(GpuError::Shape(format!(
            "shape {shape:?} needs {} dims {sizes:?} after merging; strided kernels take at most {MAX_DIMS}",
            dims.len()
        )));
    }
    Ok(dims)
}

/// The dim that is cut into chunks, and the chunk length: the outermost dim
/// such that everything inside one index of it fits a window for every operand.
fn split_point(
    dims: &[Dim],
    ops: &[(usize, &[usize], usize)],
    max_binding: u64,
    align: u64,
) -> Result<(usize, usize), GpuError> {
    let r = dims.len();
    // Span in elements of dims k.. for operand j: 1 + sum (size - 1) * stride (1 for k = r).
    let span = |j: usize, k: usize| 1 + dims[k..].iter().map(|(n, s)| (n - 1) * s[j]).sum::<usize>();
    let inner_numel = |k: usize| dims[k..].iter().map(|d| d.0).product::<usize>();
    // Elements one window may span (less the misalignment of its start).
    let room: Vec<usize> = ops
        .iter()
        .map(|o| ((max_binding / o.2 as u64) as usize).saturating_sub((align as usize).div_ceil(o.2)))
        .collect();
    if room.contains(&0) {
        return Err(GpuError::TooLarge { bytes: align, limit: max_binding, what: "storage binding (alignment slack)" });
    }
    let split = (0..r)
        .find(|&k| inner_numel(k + 1) <= MAX_PIECE_ELEMS && (0..ops.len()).all(|j| span(j, k + 1) <= room[j]))
        .unwrap_or(r - 1);
    let mut chunk = dims[split].0.min(MAX_PIECE_ELEMS / inner_numel(split + 1));
    for (j, &room_j) in room.iter().enumerate() {
        let step = dims[split].1[j];
        let inner = span(j, split + 1);
        // A broadcast (step 0) operand spans the same window whatever the chunk.
        if let Some(q) = room_j.saturating_sub(inner).checked_div(step) {
            chunk = chunk.min(q + 1);
        }
    }
    Ok((split, chunk))
}

/// The launch covering `len` indices of `dims[split]` from `start`, at outer index `idx`.
fn piece(
    dims: &[Dim],
    split: usize,
    idx: &[usize],
    start: usize,
    len: usize,
    ops: &[(usize, &[usize], usize)],
    align: u64,
) -> Piece {
    let mut pd = [1u32; MAX_DIMS];
    let mut ps = vec![[0u32; MAX_DIMS]; ops.len()];
    // Piece dims: dims[split] (len) then the inner ones, stored innermost first.
    let local: Vec<(usize, &Vec<usize>)> =
        std::iter::once((len, &dims[split].1)).chain(dims[split + 1..].iter().map(|(n, s)| (*n, s))).collect();
    for (q, (n, s)) in local.iter().rev().enumerate() {
        pd[q] = *n as u32;
        for j in 0..ops.len() {
            ps[j][q] = s[j] as u32;
        }
    }
    let mut windows = Vec::with_capacity(ops.len());
    let mut offsets = Vec::with_capacity(ops.len());
    for (j, op) in ops.iter().enumerate() {
        let elem = op.2 as u64;
        let base =
            op.0 + idx.iter().zip(&dims[..split]).map(|(i, (_, s))| i * s[j]).sum::<usize>() + start * dims[split].1[j];
        let ext = local.iter().map(|(n, s)| (n - 1) * s[j]).sum::<usize>() + 1;
        let first = base as u64 * elem;
        let at = first / align * align;
        let end = (base + ext) as u64 * elem;
        windows.push((at, (end - at).div_ceil(4) * 4));
        offsets.push(((first - at) / elem) as u32);
    }
    let numel = local.iter().map(|l| l.0).product();
    Piece { dims: pd, rank: local.len() as u32, numel, strides: ps, windows, offsets }
}

/// Elements spanned by a whole strided walk (for error messages).
fn span_all(shape: &[usize], strides: &[usize]) -> usize {
    1 + shape.iter().zip(strides).map(|(n, s)| n.saturating_sub(1) * s).sum::<usize>()
}

/// Records the strided copy `dst[...] = src[...]` over `shape`.
fn copy(gpu: &Gpu, shape: &[usize], src: Strided<'_>, dst: Strided<'_>) -> Result<(), GpuError> {
    if src.tensor.dtype() != dst.tensor.dtype() {
        return Err(GpuError::Shape(format!(
            "copy from {:?} to {:?}: dtypes differ",
            src.tensor.dtype(),
            dst.tensor.dtype()
        )));
    }
    let kernel = Kernel::new(ShaderFamily::Layout, src.tensor.dtype().variant(), "copy");
    let (s, d) = (src.tensor, dst.tensor);
    for p in plan(gpu, shape, &[src, dst])? {
        let params = p.params(0, 0.0);
        gpu.dispatch(&kernel, &params, &[p.binding(0, s), p.binding(1, d)], p.groups(gpu))?;
    }
    Ok(())
}

/// A contiguous walk of the whole of `t`.
fn whole_walk(t: &Tensor) -> Strided<'_> {
    Strided { tensor: t, offset: 0, strides: contiguous_strides(t.shape()) }
}

/// `axis` (negative counts from the end) as an index into `rank` dims.
fn resolve_axis(op: &str, axis: isize, rank: usize) -> Result<usize, GpuError> {
    let a = if axis < 0 { axis + rank as isize } else { axis };
    if a < 0 || a >= rank as isize {
        return Err(GpuError::Shape(format!("{op}: axis {axis} is out of range for {rank} dims")));
    }
    Ok(a as usize)
}

/// `x.narrow(axis, start, len)` as a new contiguous tensor (e.g. CFG's
/// batch split: `slice(x, 0, 0, b)` and `slice(x, 0, b, b)`).
pub fn slice(gpu: &Gpu, x: &Tensor, axis: isize, start: usize, len: usize) -> Result<Tensor, GpuError> {
    let a = resolve_axis("slice", axis, x.rank())?;
    let n = x.shape()[a];
    if start.checked_add(len).is_none_or(|end| end > n) {
        return Err(GpuError::Shape(format!(
            "slice: {start}..{start}+{len} is out of range for axis {axis} of {:?}",
            x.shape()
        )));
    }
    let mut shape = x.shape().to_vec();
    shape[a] = len;
    let y = gpu.empty(&shape, x.dtype())?;
    let strides = contiguous_strides(x.shape());
    let src = Strided { tensor: x, offset: start * strides[a], strides };
    copy(gpu, &shape, src, whole_walk(&y))?;
    Ok(y)
}

/// `x.permute(perm)` made contiguous: output dim `i` is input dim `perm[i]`.
pub fn permute(gpu: &Gpu, x: &Tensor, perm: &[usize]) -> Result<Tensor, GpuError> {
    let r = x.rank();
    let mut seen = vec![false; r];
    let valid = perm.len() == r && perm.iter().all(|&p| p < r && !std::mem::replace(&mut seen[p], true));
    if !valid {
        return Err(GpuError::Shape(format!(
            "permute: {perm:?} is not a permutation of the {r} dims of {:?}",
            x.shape()
        )));
    }
    let shape: Vec<usize> = perm.iter().map(|&p| x.shape()[p]).collect();
    let y = gpu.empty(&shape, x.dtype())?;
    let xs = contiguous_strides(x.shape());
    let src = Strided { tensor: x, offset: 0, strides: perm.iter().map(|&p| xs[p]).collect() };
    copy(gpu, &shape, src, whole_walk(&y))?;
    Ok(y)
}

/// Swaps the last two dims: `[B, C, HW] -> [B, HW, C]` and back around attention.
pub fn transpose_last2(gpu: &Gpu, x: &Tensor) -> Result<Tensor, GpuError> {
    let r = x.rank();
    if r < 2 {
        return Err(GpuError::Shape(format!("transpose_last2: needs at least 2 dims, got {:?}", x.shape())));
    }
    let mut perm: Vec<usize> = (0..r).collect();
    perm.swap(r - 2, r - 1);
    permute(gpu, x, &perm)
}

/// `torch.cat(xs, axis)`: shapes agree except along `axis`; one dtype.
pub fn concat(gpu: &Gpu, xs: &[&Tensor], axis: isize) -> Result<Tensor, GpuError> {
    let Some(first) = xs.first() else {
        return Err(GpuError::Shape("concat: no tensors given".into()));
    };
    let a = resolve_axis("concat", axis, first.rank())?;
    let mut total = 0;
    for x in xs {
        let same_rest = x.rank() == first.rank()
            && x.shape().iter().zip(first.shape()).enumerate().all(|(d, (p, q))| d == a || p == q);
        if !same_rest {
            let shapes: Vec<&[usize]> = xs.iter().map(|x| x.shape()).collect();
            return Err(GpuError::Shape(format!("concat along axis {axis}: shapes {shapes:?} differ off that axis")));
        }
        if x.dtype() != first.dtype() {
            let dtypes: Vec<_> = xs.iter().map(|x| x.dtype()).collect();
            return Err(GpuError::Shape(format!("concat: dtypes {dtypes:?} differ")));
        }
        total += x.shape()[a];
    }
    let mut shape = first.shape().to_vec();
    shape[a] = total;
    let y = gpu.empty(&shape, first.dtype())?;
    let ys = contiguous_strides(&shape);
    let mut at = 0;
    // Each input writes its slab of the output: [.., at..at + n_k, ..].
    for x in xs {
        let dst = Strided { tensor: &y, offset: at * ys[a], strides: ys.clone() };
        copy(gpu, x.shape(), whole_walk(x), dst)?;
        at += x.shape()[a];
    }
    Ok(y)
}

/// `F.interpolate(x, scale_factor=2, mode="nearest")` on `[B, C, H, W]`.
pub fn upsample_nearest2x(gpu: &Gpu, x: &Tensor) -> Result<Tensor, GpuError> {
    upsample_nearest(gpu, x, 2)
}

/// Nearest upsampling of `[B, C, H, W]` by an integer `scale`: each pixel
/// becomes a `scale x scale` block (PyTorch's "nearest" at an integer factor).
pub fn upsample_nearest(gpu: &Gpu, x: &Tensor, scale: usize) -> Result<Tensor, GpuError> {
    let &[b, c, h, w] = x.shape() else {
        return Err(GpuError::Shape(format!("upsample_nearest: expects [B, C, H, W], got {:?}", x.shape())));
    };
    if scale == 0 {
        return Err(GpuError::Shape("upsample_nearest: scale must be at least 1".into()));
    }
    let y = gpu.empty(&[b, c, h * scale, w * scale], x.dtype())?;
    // [B, C, H*s, W*s] viewed as [B, C, H, s, W, s]; the source repeats along both s dims.
    let shape = [b, c, h, scale, w, scale];
    let src = Strided { tensor: x, offset: 0, strides: vec![c * h * w, h * w, w, 0, 1, 0] };
    let dst = Strided { tensor: &y, offset: 0, strides: contiguous_strides(&shape) };
    copy(gpu, &shape, src, dst)?;
    Ok(y)
}

/// Splits `x`'s shape into (batch, C, H, W) for the pixel ops: leading dims
/// are batch, as in torch.
fn batch_chw(op: &str, x: &Tensor) -> Result<(usize, usize, usize, usize), GpuError> {
    let s = x.shape();
    if s.len() < 3 {
        return Err(GpuError::Shape(format!("{op}: expects [*, C, H, W], got {s:?}")));
    }
    let r = s.len();
    Ok((s[..r - 3].iter().product(), s[r - 3], s[r - 2], s[r - 1]))
}

/// `F.pixel_shuffle(x, r)`: `[*, C*r*r, H, W] -> [*, C, H*r, W*r]`, with
/// `y[c, h*r + i, w*r + j] = x[c*r*r + i*r + j, h, w]`.
pub fn pixel_shuffle(gpu: &Gpu, x: &Tensor, r: usize) -> Result<Tensor, GpuError> {
    let (b, crr, h, w) = batch_chw("pixel_shuffle", x)?;
    if r == 0 || crr % (r * r) != 0 {
        return Err(GpuError::Shape(format!(
            "pixel_shuffle: {crr} channels of {:?} do not divide by r*r for r = {r}",
            x.shape()
        )));
    }
    let c = crr / (r * r);
    let mut out = x.shape()[..x.rank() - 3].to_vec();
    out.extend([c, h * r, w * r]);
    let y = gpu.empty(&out, x.dtype())?;
    // Walk y as [B, C, H, r(i), W, r(j)].
    let shape = [b, c, h, r, w, r];
    let hw = h * w;
    let src = Strided { tensor: x, offset: 0, strides: vec![crr * hw, r * r * hw, w, r * hw, 1, hw] };
    let dst = Strided { tensor: &y, offset: 0, strides: contiguous_strides(&shape) };
    copy(gpu, &shape, src, dst)?;
    Ok(y)
}

/// `F.pixel_unshuffle(x, r)`: `[*, C, H, W] -> [*, C*r*r, H/r, W/r]`, with
/// `y[c*r*r + i*r + j, h, w] = x[c, h*r + i, w*r + j]` (RealESRGAN x2's input).
pub fn pixel_unshuffle(gpu: &Gpu, x: &Tensor, r: usize) -> Result<Tensor, GpuError> {
    let (b, c, h, w) = batch_chw("pixel_unshuffle", x)?;
    if r == 0 || h % r != 0 || w % r != 0 {
        return Err(GpuError::Shape(format!(
            "pixel_unshuffle: height {h} and width {w} of {:?} must divide by r = {r}",
            x.shape()
        )));
    }
    let (ho, wo) = (h / r, w / r);
    let mut out = x.shape()[..x.rank() - 3].to_vec();
    out.extend([c * r * r, ho, wo]);
    let y = gpu.empty(&out, x.dtype())?;
    // Walk y as [B, C, r(i), r(j), H/r, W/r].
    let shape = [b, c, r, r, ho, wo];
    let src = Strided { tensor: x, offset: 0, strides: vec![c * h * w, h * w, w, 1, r * w, r] };
    let dst = Strided { tensor: &y, offset: 0, strides: contiguous_strides(&shape) };
    copy(gpu, &shape, src, dst)?;
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a plan on the CPU like the shader would (each operand seen only
    /// through its window) and returns, per iterated element in row-major
    /// order, the absolute element index each operand touched.
    fn simulate(shape: &[usize], ops: &[(usize, &[usize], usize)], max_binding: u64, align: u64) -> Vec<Vec<usize>> {
        let pieces = plan_with_limits(shape, ops, max_binding, align).unwrap();
        let mut seen = Vec::new();
        for p in &pieces {
            for &(at, size) in &p.windows {
                assert_eq!(at % align, 0, "window start is aligned");
                assert_eq!(size % 4, 0);
                assert!(size <= max_binding, "window {size} exceeds binding {max_binding}");
            }
            for i in 0..p.numel {
                let mut rem = i;
                let mut touched: Vec<usize> = p.offsets.iter().map(|&o| o as usize).collect();
                for q in 0..p.rank as usize {
                    let n = p.dims[q] as usize;
                    let c = rem % n;
                    rem /= n;
                    for (j, t) in touched.iter_mut().enumerate() {
                        *t += c * p.strides[j][q] as usize;
                    }
                }
                for (j, t) in touched.iter_mut().enumerate() {
                    let elem = ops[j].2;
                    let (at, size) = p.windows[j];
                    assert!(((*t + 1) * elem) as u64 <= size, "element inside its window");
                    *t += (at as usize) / elem;
                }
                seen.push(touched);
            }
        }
        seen
    }

    /// What the walk should touch, element by element in row-major order.
    fn direct(shape: &[usize], ops: &[(usize, &[usize], usize)]) -> Vec<Vec<usize>> {
        let n: usize = shape.iter().product();
        (0..n)
            .map(|mut i| {
                let mut idx = vec![0; shape.len()];
                for d in (0..shape.len()).rev() {
                    idx[d] = i % shape[d];
                    i /= shape[d];
                }
                ops.iter().map(|o| o.0 + idx.iter().zip(o.1).map(|(c, s)| c * s).sum::<usize>()).collect()
            })
            .collect()
    }

    #[test]
    fn windows_cover_every_element_once_under_tiny_binding_limits() {
        let up_shape = [2, 3, 5, 2, 7, 2];
        let up_dst = contiguous_strides(&up_shape);
        let perm_src = [60, 1, 12]; // [B, C, HW] = [2, 12, 5] read as [B, HW, C]
        let perm_dst = contiguous_strides(&[2, 5, 12]);
        let cat_dst = contiguous_strides(&[2, 9, 4]);
        let cat_src = contiguous_strides(&[2, 3, 4]);
        let bcast = [0, 1, 0];
        let bcast_dst = contiguous_strides(&[3, 4, 5]);
        type Op<'a> = (usize, &'a [usize], usize);
        let cases: Vec<(Vec<usize>, Vec<Op>)> = vec![
            (up_shape.to_vec(), vec![(0, &[105, 35, 7, 0, 1, 0][..], 4), (0, &up_dst[..], 4)]),
            (vec![2, 5, 12], vec![(0, &perm_src[..], 2), (0, &perm_dst[..], 2)]),
            (vec![2, 3, 4], vec![(0, &cat_src[..], 4), (4 * 5, &cat_dst[..], 4)]),
            (vec![3, 4, 5], vec![(0, &bcast[..], 4), (0, &bcast_dst[..], 4)]),
        ];
        for (shape, ops) in &cases {
            let want = direct(shape, ops);
            for (max_binding, align) in [(1 << 20, 256), (64, 16), (40, 8), (16, 4), (24, 8)] {
                let got = simulate(shape, ops, max_binding, align);
                assert_eq!(got, want, "shape {shape:?} binding {max_binding} align {align}");
            }
        }
    }

    #[test]
    fn contiguous_dims_merge_into_one() {
        let s = contiguous_strides(&[2, 3, 4, 5, 6, 7, 8]);
        let p = plan_with_limits(&[2, 3, 4, 5, 6, 7, 8], &[(0, &s, 4), (0, &s, 4)], 1 << 30, 256).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].rank, p[0].numel), (1, 2 * 3 * 4 * 5 * 6 * 7 * 8));
    }

    #[test]
    fn unmergeable_seven_dims_are_refused() {
        let shape = [2, 2, 2, 2, 2, 2, 2];
        let a = [64, 0, 16, 0, 4, 0, 1];
        let b = [0, 32, 0, 8, 0, 2, 0];
        let e = plan_with_limits(&shape, &[(0, &a, 4), (0, &b, 4)], 1 << 30, 256).unwrap_err();
        assert!(e.to_string().contains("at most 6"), "{e}");
    }
}
