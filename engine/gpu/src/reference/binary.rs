//! Reference broadcasting binary ops and GEGLU in f64, written from the
//! definitions: NumPy/PyTorch broadcasting (trailing dims aligned, size-1
//! dims repeat) and diffusers' `h * gelu(gate)` over `x.chunk(2, -1)`.

use super::elementwise::gelu;

/// The broadcast shape of `a` and `b`, or `None` when some aligned pair of
/// dims differs and neither is 1.
pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for (d, o) in out.iter_mut().enumerate() {
        // Dim d of the output is dim d - (r - len) of each input, or 1 before it.
        let da = if d >= r - a.len() { a[d - (r - a.len())] } else { 1 };
        let db = if d >= r - b.len() { b[d - (r - b.len())] } else { 1 };
        *o = if da == db {
            da
        } else if da == 1 {
            db
        } else if db == 1 {
            da
        } else {
            return None;
        };
    }
    Some(out)
}

/// Row-major index of `idx` (an output multi-index) in a tensor of `shape`
/// broadcast to the output's rank: missing leading dims and size-1 dims read index 0.
fn broadcast_index(idx: &[usize], shape: &[usize]) -> usize {
    let lead = idx.len() - shape.len();
    let mut flat = 0;
    for (d, &n) in shape.iter().enumerate() {
        let i = if n == 1 { 0 } else { idx[lead + d] };
        flat = flat * n + i;
    }
    flat
}

/// `f(a, b)` over the broadcast shape; panics if the shapes do not broadcast.
pub fn broadcast(
    a: &[f64],
    a_shape: &[usize],
    b: &[f64],
    b_shape: &[usize],
    f: impl Fn(f64, f64) -> f64,
) -> (Vec<f64>, Vec<usize>) {
    let shape = broadcast_shape(a_shape, b_shape).expect("shapes broadcast");
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0; shape.len()];
    for _ in 0..n {
        out.push(f(a[broadcast_index(&idx, a_shape)], b[broadcast_index(&idx, b_shape)]));
        // Next multi-index, last dim fastest.
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    (out, shape)
}

/// PReLU of one element: `a` where `a >= 0`, else `slope * a` (`nn.PReLU`).
pub fn prelu(a: f64, slope: f64) -> f64 {
    if a >= 0.0 { a } else { slope * a }
}

/// GEGLU over the last dim of `x` (length 2N): `x[.., j] * gelu(x[.., N + j])`.
pub fn geglu(x: &[f64], last: usize) -> Vec<f64> {
    let n = last / 2;
    let mut out = Vec::with_capacity(x.len() / 2);
    for row in x.chunks(last) {
        for j in 0..n {
            out.push(row[j] * gelu(row[n + j]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn broadcast_follows_numpy_rules() {
        assert_eq!(super::broadcast_shape(&[3, 1, 5], &[1, 4, 1]), Some(vec![3, 4, 5]));
        assert_eq!(super::broadcast_shape(&[2, 3], &[]), Some(vec![2, 3]));
        assert_eq!(super::broadcast_shape(&[3, 4], &[5]), None);
        let (v, s) = super::broadcast(&[1.0, 2.0], &[2, 1], &[10.0, 20.0, 30.0], &[3], |a, b| a + b);
        assert_eq!(s, [2, 3]);
        assert_eq!(v, [11.0, 21.0, 31.0, 12.0, 22.0, 32.0]);
    }
}
