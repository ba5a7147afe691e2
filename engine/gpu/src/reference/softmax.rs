//! Reference softmax over the last axis in f64:
//! `exp(x_i - max) / sum_j exp(x_j - max)` per row.

/// Softmax of every row of length `n` in `x`.
pub fn softmax(x: &[f32], n: usize) -> Vec<f64> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(n) {
        let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
        let e: Vec<f64> = row.iter().map(|&v| (v as f64 - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        y.extend(e.iter().map(|v| v / sum));
    }
    y
}
