//! Reference batched matmul in f64: `torch.matmul(op(a), op(b)) + bias`, the
//! definition `ops::matmul` is tested against. Activations are applied by the
//! caller with `reference::elementwise`.

/// `op(A) · op(B) (+ bias per column)` for row-major f32 inputs, accumulated
/// in f64. `a_shape` is `[.., M, K]` (`[.., K, M]` when `transpose_a`),
/// `b_shape` `[.., K, N]` (`[.., N, K]` when `transpose_b`). Batch dims match,
/// or one side has none and is shared by every batch item. Returns the
/// result and its shape `[.., M, N]`. Panics on inconsistent shapes (tests
/// pass valid ones).
pub fn matmul(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    transpose_a: bool,
    transpose_b: bool,
    bias: Option<&[f32]>,
) -> (Vec<f64>, Vec<usize>) {
    let (ar, br) = (a_shape.len(), b_shape.len());
    assert!(ar >= 2 && br >= 2, "rank < 2");
    let (m, k) = if transpose_a { (a_shape[ar - 1], a_shape[ar - 2]) } else { (a_shape[ar - 2], a_shape[ar - 1]) };
    let (kb, n) = if transpose_b { (b_shape[br - 1], b_shape[br - 2]) } else { (b_shape[br - 2], b_shape[br - 1]) };
    assert_eq!(k, kb, "inner dimensions differ");
    let a_batch: usize = a_shape[..ar - 2].iter().product();
    let b_batch: usize = b_shape[..br - 2].iter().product();
    let batch_dims = if ar > 2 { &a_shape[..ar - 2] } else { &b_shape[..br - 2] };
    let batch: usize = batch_dims.iter().product();
    let mut out = vec![0.0f64; batch * m * n];
    for bi in 0..batch {
        // A side without batch dims is shared by every item.
        let a0 = if a_batch == 1 && ar == 2 { 0 } else { bi * m * k };
        let b0 = if b_batch == 1 && br == 2 { 0 } else { bi * k * n };
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    let av = if transpose_a { a[a0 + p * m + i] } else { a[a0 + i * k + p] };
                    let bv = if transpose_b { b[b0 + j * k + p] } else { b[b0 + p * n + j] };
                    s += av as f64 * bv as f64;
                }
                if let Some(bias) = bias {
                    s += bias[j] as f64;
                }
                out[bi * m * n + i * n + j] = s;
            }
        }
    }
    let mut shape = batch_dims.to_vec();
    shape.extend([m, n]);
    (out, shape)
}

#[cfg(test)]
mod tests {
    #[test]
    fn small_product_by_hand() {
        // [[1, 2], [3, 4]] · [[5, 6], [7, 8]] = [[19, 22], [43, 50]]
        let (c, s) = super::matmul(&[1., 2., 3., 4.], &[2, 2], &[5., 6., 7., 8.], &[2, 2], false, false, None);
        assert_eq!((c, s), (vec![19., 22., 43., 50.], vec![2, 2]));
        // Transposing B: [[5, 7], [6, 8]] as stored gives the same product, plus bias.
        let (c, _) =
            super::matmul(&[1., 2., 3., 4.], &[2, 2], &[5., 7., 6., 8.], &[2, 2], false, true, Some(&[1., -1.]));
        assert_eq!(c, vec![20., 21., 44., 49.]);
    }
}
