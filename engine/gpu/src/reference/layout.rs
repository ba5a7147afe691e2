//! Reference data movement, written as index maps from the PyTorch
//! definitions: `narrow`, `permute`, `cat`, nearest `interpolate` at an
//! integer scale, `pixel_shuffle` / `pixel_unshuffle`. Generic over the
//! element type (used with f64, and with f32 to compare bit patterns).

/// Unravels a row-major flat index into a multi-index of `shape`.
fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

/// Row-major flat index of `idx` in `shape`.
fn ravel(idx: &[usize], shape: &[usize]) -> usize {
    idx.iter().zip(shape).fold(0, |f, (&i, &n)| f * n + i)
}

/// `x.narrow(axis, start, len)`.
pub fn slice<T: Copy>(x: &[T], shape: &[usize], axis: usize, start: usize, len: usize) -> Vec<T> {
    let mut out_shape = shape.to_vec();
    out_shape[axis] = len;
    let n: usize = out_shape.iter().product();
    (0..n)
        .map(|i| {
            let mut idx = unravel(i, &out_shape);
            idx[axis] += start;
            x[ravel(&idx, shape)]
        })
        .collect()
}

/// `x.permute(perm)`: output dim d is input dim `perm[d]`.
pub fn permute<T: Copy>(x: &[T], shape: &[usize], perm: &[usize]) -> Vec<T> {
    let out_shape: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    (0..x.len())
        .map(|i| {
            let o = unravel(i, &out_shape);
            let mut idx = vec![0; shape.len()];
            for (d, &p) in perm.iter().enumerate() {
                idx[p] = o[d];
            }
            x[ravel(&idx, shape)]
        })
        .collect()
}

/// `torch.cat(xs, axis)`: output index `k` along `axis` comes from the input
/// whose range holds it.
pub fn concat<T: Copy>(xs: &[(&[T], &[usize])], axis: usize) -> Vec<T> {
    let mut out_shape = xs[0].1.to_vec();
    out_shape[axis] = xs.iter().map(|x| x.1[axis]).sum();
    let n: usize = out_shape.iter().product();
    (0..n)
        .map(|i| {
            let mut idx = unravel(i, &out_shape);
            for (data, shape) in xs {
                if idx[axis] < shape[axis] {
                    return data[ravel(&idx, shape)];
                }
                idx[axis] -= shape[axis];
            }
            unreachable!("index inside the concatenated axis")
        })
        .collect()
}

/// Nearest upsampling of `[B, C, H, W]` by `s`: `y[b, c, h, w] = x[b, c, h / s, w / s]`
/// (PyTorch's "nearest" picks floor(dst * in / out)).
pub fn upsample_nearest<T: Copy>(x: &[T], shape: [usize; 4], s: usize) -> Vec<T> {
    let [b, c, h, w] = shape;
    let mut out = Vec::with_capacity(x.len() * s * s);
    for bc in 0..b * c {
        for oh in 0..h * s {
            for ow in 0..w * s {
                out.push(x[(bc * h + oh * h / (h * s)) * w + ow * w / (w * s)]);
            }
        }
    }
    out
}

/// `F.pixel_shuffle`: `y[b, c, h*r + i, w*r + j] = x[b, c*r*r + i*r + j, h, w]`,
/// `shape` = `[B, C*r*r, H, W]`.
pub fn pixel_shuffle<T: Copy>(x: &[T], shape: [usize; 4], r: usize) -> Vec<T> {
    let [b, crr, h, w] = shape;
    let c = crr / (r * r);
    let out_shape = [b, c, h * r, w * r];
    (0..x.len())
        .map(|o| {
            let idx = unravel(o, &out_shape);
            let (i, j) = (idx[2] % r, idx[3] % r);
            x[ravel(&[idx[0], idx[1] * r * r + i * r + j, idx[2] / r, idx[3] / r], &shape)]
        })
        .collect()
}

/// `F.pixel_unshuffle`: `y[b, c*r*r + i*r + j, h, w] = x[b, c, h*r + i, w*r + j]`,
/// `shape` = `[B, C, H, W]`.
pub fn pixel_unshuffle<T: Copy>(x: &[T], shape: [usize; 4], r: usize) -> Vec<T> {
    let [b, c, h, w] = shape;
    let out_shape = [b, c * r * r, h / r, w / r];
    (0..x.len())
        .map(|o| {
            let idx = unravel(o, &out_shape);
            let (ch, i, j) = (idx[1] / (r * r), idx[1] / r % r, idx[1] % r);
            x[ravel(&[idx[0], ch, idx[2] * r + i, idx[3] * r + j], &shape)]
        })
        .collect()
}
