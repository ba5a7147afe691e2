//! Reference sinusoidal timestep embedding in f64, from diffusers'
//! `get_timestep_embedding`: `half = dim / 2`,
//! `freq_k = exp(-ln(max_period) * k / (half - shift))`, row =
//! `[sin(t * freq), cos(t * freq)]` (`[cos, sin]` when flipped), zero-padded
//! by one column when `dim` is odd.

/// The `[N, dim]` embedding, row-major.
pub fn timestep_embedding(
    timesteps: &[f64],
    dim: usize,
    flip_sin_to_cos: bool,
    shift: f64,
    max_period: f64,
) -> Vec<f64> {
    let half = dim / 2;
    let mut out = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args: Vec<f64> =
            (0..half).map(|k| t * (-max_period.ln() * k as f64 / (half as f64 - shift)).exp()).collect();
        let sin = args.iter().map(|a| a.sin());
        let cos = args.iter().map(|a| a.cos());
        if flip_sin_to_cos {
            out.extend(cos.chain(sin));
        } else {
            out.extend(sin.chain(cos));
        }
        if dim % 2 == 1 {
            out.push(0.0);
        }
    }
    out
}
