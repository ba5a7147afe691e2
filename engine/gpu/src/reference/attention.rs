//! Reference multi-head scaled dot-product attention in f64, with the full
//! score matrix: per (batch, head), `S = q k^T * scale`, masked entries
//! (key > query under the causal mask) removed, `P = softmax(S)` per row,
//! `out = P v`. Layout as the kernel's: q `[B, Lq, H*D]`, k and v
//! `[B, Lk, H*D]`, out `[B, Lq, H*D]`, head h at channels `h*D..h*D+D`.

/// Shapes and options of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub batch: usize,
    pub lq: usize,
    pub lk: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub causal: bool,
    pub scale: f64,
}

pub fn attention(q: &[f32], k: &[f32], v: &[f32], s: AttentionShape) -> Vec<f64> {
    let (d, hd) = (s.head_dim, s.heads * s.head_dim);
    let mut out = vec![0.0; s.batch * s.lq * hd];
    for b in 0..s.batch {
        for h in 0..s.heads {
            let qi = |i: usize, c: usize| q[(b * s.lq + i) * hd + h * d + c] as f64;
            let kj = |j: usize, c: usize| k[(b * s.lk + j) * hd + h * d + c] as f64;
            let vj = |j: usize, c: usize| v[(b * s.lk + j) * hd + h * d + c] as f64;
            // Scores, with masked entries as -inf so softmax gives them 0.
            let mut scores = vec![vec![f64::NEG_INFINITY; s.lk]; s.lq];
            for (i, row) in scores.iter_mut().enumerate() {
                for (j, sc) in row.iter_mut().enumerate() {
                    if s.causal && j > i {
                        continue;
                    }
                    *sc = (0..d).map(|c| qi(i, c) * kj(j, c)).sum::<f64>() * s.scale;
                }
            }
            for (i, row) in scores.iter().enumerate() {
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = row.iter().map(|&x| (x - max).exp()).collect();
                let sum: f64 = p.iter().sum();
                for c in 0..d {
                    let o: f64 = p.iter().enumerate().map(|(j, &pj)| pj * vj(j, c)).sum();
                    out[(b * s.lq + i) * hd + h * d + c] = o / sum;
                }
            }
        }
    }
    out
}
