// Unary elementwise activations: y[i] = f(x[i]), computed in f32.
// Bindings: 0 params, 1 x (read), 2 y (write). One element per invocation;
// the grid may be 2-D when there are more than 65535 workgroups.

struct Params {
    n: u32,
    // leaky_relu: negative slope; scale: the factor.
    alpha: f32,
}

// Bindings, WG and index: shaders/lib/unary_io.wgsl.

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
    y[i] = T(gelu_f32(v));
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
