// Unary elementwise activations: y[i] = f(x[i]), computed in f32.
// Bindings: 0 params, 1 x (read), 2 y (write). One element per invocation;
// the grid may be 2-D when there are more than 65535 workgroups.

struct Params {
    n: u32,
    // leaky_relu: negative slope; scale: the factor.
    alpha: f32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read_write> y: array<T>;

const WG: u32 = 256u;

fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// erf by Abramowitz-Stegun 7.1.26 is only 1.5e-7 accurate; use the
// W. J. Cody style rational form via exp for |x| large and a series for small.
fn erf_f32(v: f32) -> f32 {
    let a = abs(v);
    // For a < 0.5 a Taylor series converges fast and is exact to f32.
    if a < 0.5 {
        let z = v * v;
        return v * 1.1283791670955126 * (1.0 + z * (-0.3333333333333333 + z * (0.1 + z * (-0.023809523809523808 + z * (0.004629629629629629 + z * (-0.0007575757575757576))))));
    }
    // Numerical Recipes erfc (Chebyshev), relative error < 1.2e-7.
    let t = 1.0 / (1.0 + 0.5 * a);
    let r = t * exp(-a * a - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
    return select(r - 1.0, 1.0 - r, v >= 0.0);
}

@compute @workgroup_size(WG)
fn silu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= params.n { return; }
    let v = f32(x[i]);
    y[i] = T(v / (1.0 + exp(-v)));
}

// GELU with the exact erf form (PyTorch's default, used by SD's GEGLU).
@compute @workgroup_size(WG)
fn gelu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= params.n { return; }
    let v = f32(x[i]);
    y[i] = T(0.5 * v * (1.0 + erf_f32(v * 0.7071067811865476)));
}

// x * sigmoid(1.702 x), the activation of OpenAI's CLIP text encoder.
@compute @workgroup_size(WG)
fn quick_gelu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= params.n { return; }
    let v = f32(x[i]);
    y[i] = T(v / (1.0 + exp(-1.702 * v)));
}

@compute @workgroup_size(WG)
fn leaky_relu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= params.n { return; }
    let v = f32(x[i]);
    y[i] = T(select(v * params.alpha, v, v >= 0.0));
}

@compute @workgroup_size(WG)
fn scale(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= params.n { return; }
    y[i] = T(f32(x[i]) * params.alpha);
}
