//! Reference GroupNorm and LayerNorm in f64, from PyTorch's definitions:
//! `(x - mean) / sqrt(var + eps) * gamma + beta` with the biased variance,
//! over each group's channels and spatial positions (GroupNorm, optionally
//! followed by SiLU) or over the last axis (LayerNorm).

use super::elementwise::silu as silu_fn;

/// Mean and biased variance, two passes.
fn mean_var(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    (mean, var)
}

/// GroupNorm of `x` with shape `shape` = `[B, C, *spatial]`.
pub fn group_norm(
    x: &[f32],
    shape: &[usize],
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    silu: bool,
) -> Vec<f64> {
    let (b, c) = (shape[0], shape[1]);
    let spatial: usize = shape[2..].iter().product();
    let cpg = c / groups;
    let mut y = vec![0.0; x.len()];
    for bi in 0..b {
        for g in 0..groups {
            // Channels g*cpg .. (g+1)*cpg of batch bi are contiguous.
            let start = (bi * c + g * cpg) * spatial;
            let len = cpg * spatial;
            let vals: Vec<f64> = x[start..start + len].iter().map(|&v| v as f64).collect();
            let (mean, var) = mean_var(&vals);
            for (i, &v) in vals.iter().enumerate() {
                let ch = g * cpg + i / spatial;
                let mut o = (v - mean) / (var + eps).sqrt() * gamma[ch] as f64 + beta[ch] as f64;
                if silu {
                    o = silu_fn(o);
                }
                y[start + i] = o;
            }
        }
    }
    y
}

/// LayerNorm of `x` over rows of length `c`.
pub fn layer_norm(x: &[f32], c: usize, gamma: &[f32], beta: &[f32], eps: f64) -> Vec<f64> {
    let mut y = Vec::with_capacity(x.len());
    for row in x.chunks(c) {
        let vals: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        let (mean, var) = mean_var(&vals);
        for (i, &v) in vals.iter().enumerate() {
            y.push((v - mean) / (var + eps).sqrt() * gamma[i] as f64 + beta[i] as f64);
        }
    }
    y
}
