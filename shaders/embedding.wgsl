// Sinusoidal timestep embedding, as diffusers' `get_timestep_embedding`:
//   half = dim / 2; freq_k = exp(-ln(max_period) * k / (half - shift));
//   row = [sin(t * freq), cos(t * freq)], or [cos, sin] with flip_sin_to_cos,
//   and one zero column appended when dim is odd.
// Computed in f32 in the same order as diffusers' f32 tensor code.
// Bindings: 0 params, 1 t (read, f32 whatever T is: timesteps such as 999.37
// need more than f16's 11 bits), 2 y (write, [N, dim]).

struct Params {
    n: u32,
    dim: u32,
    half_dim: u32,
    flip: u32,
    // -ln(max_period), rounded to f32 as the PyTorch scalar is.
    neg_log_period: f32,
    // half - downscale_freq_shift.
    denom: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> t: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<T>;

const WG: u32 = 256u;

// Cody-Waite reduction to [-pi, pi] before sin/cos: WGSL only bounds their
// error on that interval, and arguments here reach max timestep (~1000).
// 2*pi = HI + LO with HI = 201/32 (8 significant bits), so k * HI and
// x - k * HI are exact for |k| < 2^15; only LO's product rounds.
fn reduce(x: f32) -> f32 {
    let k = round(x * 0.15915494309189535);
    return (x - k * 6.28125) - k * 1.9353071795864769e-3;
}

@compute @workgroup_size(WG)
fn timestep_embedding(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if i >= params.n { return; }
    let row = i / params.dim;
    let col = i % params.dim;
    let h = params.half_dim;
    if col >= 2u * h {
        // The zero pad column of an odd dim.
        y[i] = T(0.0);
        return;
    }
    let second = col >= h;
    let k = select(col, col - h, second);
    let freq = exp(params.neg_log_period * f32(k) / params.denom);
    let r = reduce(t[row] * freq);
    // First half is sin unless flipped; `second != flip` picks sin.
    let use_sin = second == (params.flip != 0u);
    y[i] = T(select(cos(r), sin(r), use_sin));
}
