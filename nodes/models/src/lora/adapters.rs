//! What each adapter kind adds to a weight, as ComfyUI computes it:
//! - LoRA / LoCon: `comfy/weight_adapter/lora.py` (Comfy-Org/ComfyUI@6f98b150e065f1ffc788558574a887835068bd40):
//!   `up.flatten(1) @ down.flatten(1)`, with LoCon's Tucker `lora_mid` folded into `down` first;
//!   scale `alpha / down.shape[0]`;
//! - LoHa: `comfy/weight_adapter/loha.py` (comfyanonymous/ComfyUI@183b377588102d00131247aec399f8b34e1122b4):
//!   `(w1_a @ w1_b) * (w2_a @ w2_b)`, or each factor rebuilt from its CP core `hada_t1`/`hada_t2`;
//!   scale `alpha / w1_b.shape[0]`;
//! - LoKr: `comfy/weight_adapter/lokr.py` (Comfy-Org/ComfyUI@839df9f213fb778adac2b36147cce73ace4321f6):
//!   `kron(w1, w2)`, each factor whole or `a @ b` (w2 also from its Tucker core `lokr_t2`); scale
//!   `alpha / dim`, dim = `w2_b.shape[0]`, else `w1_b.shape[0]`, else `w2.shape[0] // w1.shape[0]`;
//! - DoRA: `weight_decompose` of `comfy/weight_adapter/base.py`
//!   (comfyanonymous/ComfyUI@9c0cf36cd7964978850fd40f8cf76ac2cf9f9e15), on the output axis when
//!   `dora_scale.shape[0]` is the weight's rows (normed by the weight *before* the adapter, as ComfyUI;
//!   PEFT norms `W + ΔW`), else on the input axis (normed by `W + ΔW`'s columns);
//! - `.diff`/`.diff_b`/`.w_norm`/`.b_norm` add `strength * diff`, `.set_weight` replaces the weight
//!   (`calculate_weight` of `comfy/lora.py`, Comfy-Org/ComfyUI@ec93dcacb96b922f7cb1417b3ba22bccb082df32).
//!
//! Everything runs in f64 over the weight's rows `[out, in * kh * kw]` (row-major, as torch's
//! `flatten(1)`), rounded once to f32; ComfyUI computes in f32, so the two differ by f32 rounding.

use super::LoraTensor;

/// `torch.finfo(torch.float32).eps`: ComfyUI patches weights cast to f32, whatever the model's dtype.
const F32_EPS: f64 = f32::EPSILON as f64;

/// A LoKr Kronecker factor: stored whole (`lokr_w1`) or as the product of `_a` and `_b`.
#[derive(Debug, Clone, PartialEq)]
pub enum Factor {
    Full(LoraTensor),
    Product(LoraTensor, LoraTensor),
}

/// One module's adapter, as ComfyUI's `load_lora` picks it (the last kind found wins).
#[derive(Debug, Clone, PartialEq)]
pub enum Adapter {
    /// LoRA and LoCon: up `[out, r(, 1, 1)]`, down `[r, in(, kh, kw)]`; with a Tucker `mid`
    /// `[r, r, kh, kw]`, down is `[r, in(, 1, 1)]`.
    Lora { up: LoraTensor, down: LoraTensor, mid: Option<LoraTensor> },
    /// LoHa: `w1_a [out, r]`, `w1_b [r, in * kh * kw]` (and w2 alike); with CP cores `t1`, `t2`
    /// `[r, r, kh, kw]` the `_a` factors are `[r, out]` and the `_b` factors `[r, in]`.
    Loha { w1a: LoraTensor, w1b: LoraTensor, w2a: LoraTensor, w2b: LoraTensor, cores: Option<(LoraTensor, LoraTensor)> },
    /// LoKr: `kron(w1, w2)`; `t2` is w2's Tucker core (with w2 a product).
    Lokr { w1: Factor, w2: Factor, t2: Option<LoraTensor> },
    /// A full difference (`.diff`, `.diff_b`, `.w_norm`, `.b_norm`), shaped as the weight.
    Diff(LoraTensor),
    /// A replacement (`.set_weight`), shaped as the weight.
    Set(LoraTensor),
}

/// A LoRA's factors as row-major f32 matrices: `up [out, rank]`, `down [rank, in * kh * kw]`.
pub struct LowRank {
    pub rank: usize,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
}

/// A tensor as the matrix `t.flatten(1)` (a vector is one column), in f64.
struct Mat {
    rows: usize,
    cols: usize,
    v: Vec<f64>,
}

impl Mat {
    fn of(t: &LoraTensor) -> Mat {
        let rows = t.shape.first().copied().unwrap_or(1);
        let cols = t.values.len().checked_div(rows).unwrap_or(0);
        Mat { rows, cols, v: t.values.iter().map(|&x| x as f64).collect() }
    }

    /// `self @ other` of two 2-D tensors, or an error naming both keys.
    fn mm(&self, other: &Mat, a: &LoraTensor, b: &LoraTensor) -> Result<Mat, String> {
        if a.shape.len() != 2 || b.shape.len() != 2 || self.cols != other.rows {
            return Err(format!("{:?} {:?} @ {:?} {:?} is no matrix product", a.key, a.shape, b.key, b.shape));
        }
        Ok(self.mm_flat(other))
    }

    /// `self @ other`, the shapes checked by the caller.
    fn mm_flat(&self, other: &Mat) -> Mat {
        let mut v = vec![0f64; self.rows * other.cols];
        for i in 0..self.rows {
            let row = &mut v[i * other.cols..(i + 1) * other.cols];
            for k in 0..self.cols {
                let s = self.v[i * self.cols + k];
                for (r, o) in row.iter_mut().zip(&other.v[k * other.cols..(k + 1) * other.cols]) {
                    *r += s * o;
                }
            }
        }
        Mat { rows: self.rows, cols: other.cols, v }
    }
}

/// `torch.kron(a, b)` of matrices; for LoKr's 4-D w2 (w1 unsqueezed to `[a, b, 1, 1]`) the result's
/// row-major values are the same as the kron of `w1` and `w2.flatten(1)`.
fn kron(a: &Mat, b: &Mat) -> Mat {
    let (rows, cols) = (a.rows * b.rows, a.cols * b.cols);
    let mut v = vec![0f64; rows * cols];
    for i in 0..a.rows {
        for j in 0..a.cols {
            let s = a.v[i * a.cols + j];
            for k in 0..b.rows {
                let at = (i * b.rows + k) * cols + j * b.cols;
                for (r, x) in v[at..at + b.cols].iter_mut().zip(&b.v[k * b.cols..(k + 1) * b.cols]) {
                    *r = s * x;
                }
            }
        }
    }
    Mat { rows, cols, v }
}

/// `einsum("i j k l, j r, i p -> p r k l", t, wb, wa)`: a weight `[P, R, K, L]` from its Tucker core
/// `t [I, J, K, L]` and factors `wb [J, R]`, `wa [I, P]` (LoHa's `hada_t*`, LoKr's `lokr_t2`); as
/// the matrix `[P, R * K * L]`.
fn tucker(t: &LoraTensor, wb: &LoraTensor, wa: &LoraTensor) -> Result<Mat, String> {
    let bad = || {
        format!(
            "core {:?} {:?} with {:?} {:?} and {:?} {:?} make no Tucker product (expected [I, J, kh, kw], [J, in], [I, out])",
            t.key, t.shape, wb.key, wb.shape, wa.key, wa.shape
        )
    };
    let (&[i_n, j_n, k_n, l_n], &[j2, r_n], &[i2, p_n]) = (&t.shape[..], &wb.shape[..], &wa.shape[..]) else {
        return Err(bad());
    };
    if j2 != j_n || i2 != i_n {
        return Err(bad());
    }
    let kl = k_n * l_n;
    let f = |x: &f32| *x as f64;
    // tmp[i, r, kl] = sum_j t[i, j, kl] * wb[j, r]
    let mut tmp = vec![0f64; i_n * r_n * kl];
    for i in 0..i_n {
        for j in 0..j_n {
            let core = &t.values[(i * j_n + j) * kl..(i * j_n + j + 1) * kl];
            for r in 0..r_n {
                let w = f(&wb.values[j * r_n + r]);
                let out = &mut tmp[(i * r_n + r) * kl..(i * r_n + r + 1) * kl];
                for (o, c) in out.iter_mut().zip(core) {
                    *o += w * f(c);
                }
            }
        }
    }
    // out[p, r, kl] = sum_i wa[i, p] * tmp[i, r, kl]
    let cols = r_n * kl;
    let mut v = vec![0f64; p_n * cols];
    for p in 0..p_n {
        let row = &mut v[p * cols..(p + 1) * cols];
        for i in 0..i_n {
            let w = f(&wa.values[i * p_n + p]);
            for (o, x) in row.iter_mut().zip(&tmp[i * cols..(i + 1) * cols]) {
                *o += w * x;
            }
        }
    }
    Ok(Mat { rows: p_n, cols, v })
}

/// The weight's rows and row length: `[out, in * kh * kw]`.
fn rows_of(shape: &[usize]) -> (usize, usize) {
    let rows = shape.first().copied().unwrap_or(1);
    (rows, shape.iter().skip(1).product())
}

impl Adapter {
    /// Its kind, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Adapter::Lora { mid: None, .. } => "LoRA",
            Adapter::Lora { mid: Some(_), .. } => "LoCon (lora_mid)",
            Adapter::Loha { .. } => "LoHa",
            Adapter::Lokr { .. } => "LoKr",
            Adapter::Diff(_) => "diff",
            Adapter::Set(_) => "set_weight",
        }
    }

    /// Its tensors, as `key [shape]`, for messages.
    fn described(&self) -> String {
        let f = |f: &Factor| match f {
            Factor::Full(t) => vec![t.clone()],
            Factor::Product(a, b) => vec![a.clone(), b.clone()],
        };
        let ts: Vec<LoraTensor> = match self {
            Adapter::Lora { up, down, mid } => {
                [Some(up.clone()), Some(down.clone()), mid.clone()].into_iter().flatten().collect()
            }
            Adapter::Loha { w1a, w1b, w2a, w2b, cores } => {
                let mut v = vec![w1a.clone(), w1b.clone(), w2a.clone(), w2b.clone()];
                v.extend(cores.iter().flat_map(|(a, b)| [a.clone(), b.clone()]));
                v
            }
            Adapter::Lokr { w1, w2, t2 } => [f(w1), f(w2), t2.iter().cloned().collect()].concat(),
            Adapter::Diff(t) | Adapter::Set(t) => vec![t.clone()],
        };
        ts.iter().map(|t| format!("{:?} {:?}", t.key, t.shape)).collect::<Vec<_>>().join(", ")
    }

    /// The dimension ComfyUI divides alpha by (`None`: alpha is not used).
    pub fn rank(&self) -> Option<usize> {
        let rows = |t: &LoraTensor| t.shape.first().copied().unwrap_or(0);
        match self {
            Adapter::Lora { down, .. } => Some(rows(down)),
            Adapter::Loha { w1b, .. } => Some(rows(w1b)),
            // lokr.py: the last of these that applies sets `dim`.
            Adapter::Lokr { w2: Factor::Product(_, b), .. } => Some(rows(b)),
            Adapter::Lokr { w1: Factor::Product(_, b), .. } => Some(rows(b)),
            Adapter::Lokr { w1: Factor::Full(w1), w2: Factor::Full(w2), .. } => {
                Some(rows(w2).checked_div(rows(w1)).unwrap_or(0))
            }
            Adapter::Diff(_) | Adapter::Set(_) => None,
        }
    }

    /// Plain LoRA's (and LoCon's) factors as the matrices `up [out, r]` and `down [r, in * kh * kw]`
    /// (a Tucker `lora_mid` folded into `down`), so the GPU can make `up @ down`; `None` for the other
    /// kinds. Checked against `shape`.
    pub fn factors(&self, shape: &[usize]) -> Option<Result<LowRank, String>> {
        let Adapter::Lora { up, down, mid } = self else { return None };
        let (out, inner) = rows_of(shape);
        let down_m = match mid {
            None => Mat::of(down),
            Some(mid) => match locon_down(down, mid) {
                Ok(m) => m,
                Err(e) => return Some(Err(e)),
            },
        };
        let up_m = Mat::of(up);
        if up.shape.len() < 2
            || down.shape.len() < 2
            || up_m.cols != down_m.rows
            || (up_m.rows, down_m.cols) != (out, inner)
        {
            return Some(Err(mismatch(up, down, shape)));
        }
        let f32s = |m: Mat| m.v.into_iter().map(|v| v as f32).collect();
        Some(Ok(LowRank { rank: up_m.cols, up: f32s(up_m), down: f32s(down_m) }))
    }

    /// `W`'s change before scaling, as the weight's rows `[out, in * kh * kw]` (row-major, `shape`'s
    /// element order); for `Diff` and `Set` the tensor itself. Checked against `shape`.
    pub fn product(&self, shape: &[usize]) -> Result<Vec<f64>, String> {
        let (out, inner) = rows_of(shape);
        let m = match self {
            Adapter::Lora { up, down, mid } => {
                let down_m = match mid {
                    None => Mat::of(down),
                    Some(mid) => locon_down(down, mid)?,
                };
                let up_m = Mat::of(up);
                if up.shape.len() < 2 || down.shape.len() < 2 || up_m.cols != down_m.rows {
                    return Err(mismatch(up, down, shape));
                }
                up_m.mm_flat(&down_m)
            }
            Adapter::Loha { w1a, w1b, w2a, w2b, cores } => {
                let (m1, m2) = match cores {
                    None => (Mat::of(w1a).mm(&Mat::of(w1b), w1a, w1b)?, Mat::of(w2a).mm(&Mat::of(w2b), w2a, w2b)?),
                    Some((t1, t2)) => (tucker(t1, w1b, w1a)?, tucker(t2, w2b, w2a)?),
                };
                if (m1.rows, m1.cols) != (m2.rows, m2.cols) {
                    return Err(format!(
                        "the LoHa products are {}x{} and {}x{} ({})",
                        m1.rows,
                        m1.cols,
                        m2.rows,
                        m2.cols,
                        self.described()
                    ));
                }
                let v = m1.v.iter().zip(&m2.v).map(|(a, b)| a * b).collect();
                Mat { rows: m1.rows, cols: m1.cols, v }
            }
            Adapter::Lokr { w1, w2, t2 } => {
                let w1 = match w1 {
                    Factor::Full(t) if t.shape.len() == 2 => Mat::of(t),
                    Factor::Full(t) => return Err(format!("{:?} has shape {:?}, expected a matrix", t.key, t.shape)),
                    Factor::Product(a, b) => Mat::of(a).mm(&Mat::of(b), a, b)?,
                };
                let w2 = match (w2, t2) {
                    (Factor::Full(t), _) if t.shape.len() == 2 || t.shape.len() == 4 => Mat::of(t),
                    (Factor::Full(t), _) => {
                        return Err(format!("{:?} has shape {:?}, expected 2 or 4 dimensions", t.key, t.shape));
                    }
                    (Factor::Product(a, b), None) => Mat::of(a).mm(&Mat::of(b), a, b)?,
                    (Factor::Product(a, b), Some(t)) => tucker(t, b, a)?,
                };
                kron(&w1, &w2)
            }
            Adapter::Diff(t) | Adapter::Set(t) => {
                if t.shape != shape {
                    return Err(format!("{:?} has shape {:?}, the weight {shape:?}", t.key, t.shape));
                }
                Mat::of(t)
            }
        };
        if (m.rows, m.cols) != (out, inner) {
            return Err(match self {
                Adapter::Lora { up, down, .. } => mismatch(up, down, shape),
                _ => format!(
                    "the {} product is {}x{} ({}), the weight {shape:?} is {out}x{inner}",
                    self.kind(),
                    m.rows,
                    m.cols,
                    self.described()
                ),
            });
        }
        Ok(m.v)
    }
}

fn mismatch(up: &LoraTensor, down: &LoraTensor, shape: &[usize]) -> String {
    format!(
        "up {:?} {:?} and down {:?} {:?} do not make the weight's shape {shape:?}",
        up.key, up.shape, down.key, down.shape
    )
}

/// LoCon's down weight with its Tucker `mid` folded in, as lora.py: `[r, in(, 1, 1)]` and
/// `[r, r, kh, kw]` -> `[r, in, kh, kw]`, `new[o, c, k] = sum_r down[r, c] * mid[o, r, k]`; as the
/// matrix `[r, in * kh * kw]`.
fn locon_down(down: &LoraTensor, mid: &LoraTensor) -> Result<Mat, String> {
    let bad = || {
        format!(
            "down {:?} {:?} and mid {:?} {:?} make no Tucker weight (expected [r, in, 1, 1] and [r, r, kh, kw])",
            down.key, down.shape, mid.key, mid.shape
        )
    };
    let (&[ro, ri, kh, kw], Some(&r)) = (&mid.shape[..], down.shape.first()) else { return Err(bad()) };
    let c_n = down.shape.get(1).copied().unwrap_or(0);
    if down.shape.len() < 2 || down.values.len() != r * c_n || ri != r || ro != r {
        return Err(bad());
    }
    let k = kh * kw;
    let mut v = vec![0f64; ro * c_n * k];
    for o in 0..ro {
        for ri in 0..r {
            let m = &mid.values[(o * r + ri) * k..(o * r + ri + 1) * k];
            for c in 0..c_n {
                let d = down.values[ri * c_n + c] as f64;
                for (x, mv) in v[(o * c_n + c) * k..(o * c_n + c + 1) * k].iter_mut().zip(m) {
                    *x += d * *mv as f64;
                }
            }
        }
    }
    Ok(Mat { rows: ro, cols: c_n * k, v })
}

/// ComfyUI's `weight_decompose` (DoRA): `calc = W + scale * diff`, multiplied by `dora_scale / (norm + eps)`
/// along the axis `dora_scale` spans, then `W + strength * (calc - W)`. `w` and `diff` are the weight's
/// rows (`shape`); the result likewise.
pub fn weight_decompose(
    dora: &LoraTensor,
    w: &[f64],
    diff: &[f64],
    scale: f64,
    strength: f64,
    shape: &[usize],
) -> Result<Vec<f64>, String> {
    let (out, inner) = rows_of(shape);
    let ins = shape.get(1).copied().unwrap_or(1);
    let kernel = inner.checked_div(ins).unwrap_or(0);
    let mut calc: Vec<f64> = w.iter().zip(diff).map(|(w, d)| w + scale * d).collect();
    let ones = |from: usize| dora.shape.iter().skip(from).all(|&d| d == 1);
    let on_output = dora.shape.first() == Some(&out);
    let fits = dora.shape.len() == shape.len()
        && if on_output {
            ones(1)
        } else {
            dora.shape.first() == Some(&1) && dora.shape.get(1) == Some(&ins) && ones(2)
        };
    if !fits || shape.len() < 2 {
        return Err(format!(
            "{:?} has shape {:?}; DoRA for a weight {shape:?} takes [{out}, 1, ..] (output axis) or [1, {ins}, 1, ..] (input axis)",
            dora.key, dora.shape
        ));
    }
    let eps = F32_EPS;
    if on_output {
        // base.py: the output axis is normed by the weight before the adapter (PEFT norms W + ΔW).
        for o in 0..out {
            let norm = w[o * inner..(o + 1) * inner].iter().map(|x| x * x).sum::<f64>().sqrt() + eps;
            let f = dora.values[o] as f64 / norm;
            calc[o * inner..(o + 1) * inner].iter_mut().for_each(|x| *x *= f);
        }
    } else {
        // [out, in, k] -> the norm of each input channel over out and the kernel, of W + ΔW.
        let mut norms = vec![0f64; ins];
        for (i, x) in calc.iter().enumerate() {
            norms[(i % inner) / kernel] += x * x;
        }
        for (i, x) in calc.iter_mut().enumerate() {
            let c = (i % inner) / kernel;
            *x *= dora.values[c] as f64 / (norms[c].sqrt() + eps);
        }
    }
    if strength == 1.0 {
        return Ok(calc);
    }
    Ok(w.iter().zip(&calc).map(|(w, c)| w + strength * (c - w)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(key: &str, shape: &[usize], values: Vec<f32>) -> LoraTensor {
        LoraTensor { key: key.into(), shape: shape.to_vec(), values }
    }

    /// kron of [[1, 2]] and [[1], [10]] is [[1, 2], [10, 20]]; LoKr with full factors.
    #[test]
    fn lokr_product_is_the_kronecker_product() {
        let a = Adapter::Lokr {
            w1: Factor::Full(t("w1", &[1, 2], vec![1.0, 2.0])),
            w2: Factor::Full(t("w2", &[2, 1], vec![1.0, 10.0])),
            t2: None,
        };
        assert_eq!(a.product(&[2, 2]).unwrap(), vec![1.0, 2.0, 10.0, 20.0]);
        assert_eq!(a.rank(), Some(2));
        assert!(a.product(&[4, 1]).unwrap_err().contains("2x2"));
    }

    /// The Tucker rebuild with identity factors gives the core back.
    #[test]
    fn tucker_with_identity_factors_is_the_core() {
        let core: Vec<f32> = (0..2 * 2 * 3).map(|x| x as f32).collect();
        let id = vec![1.0, 0.0, 0.0, 1.0];
        let m =
            tucker(&t("t", &[2, 2, 3, 1], core.clone()), &t("b", &[2, 2], id.clone()), &t("a", &[2, 2], id)).unwrap();
        assert_eq!((m.rows, m.cols), (2, 6));
        assert_eq!(m.v, core.iter().map(|&x| x as f64).collect::<Vec<_>>());
    }

    /// Input-axis DoRA with dora_scale = the columns' norms leaves W unchanged at strength 1.
    #[test]
    fn input_axis_dora_of_column_norms_is_identity() {
        let w = [3.0, 1.0, 4.0, 1.0]; // [[3, 1], [4, 1]]: column norms 5, sqrt(2)
        let dora = t("d", &[1, 2], vec![5.0, 2f32.sqrt()]);
        let r = weight_decompose(&dora, &w, &[0.0; 4], 1.0, 1.0, &[2, 2]).unwrap();
        assert!(r.iter().zip(&w).all(|(a, b)| (a - b).abs() < 1e-6), "{r:?}");
        let e = weight_decompose(&t("d", &[2], vec![1.0, 1.0]), &w, &[0.0; 4], 1.0, 1.0, &[2, 2]).unwrap_err();
        assert!(e.contains("\"d\"") && e.contains("[2, 1, ..]"), "{e}");
    }
}
