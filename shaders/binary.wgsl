// Broadcasting binary ops, computed in f32: `add` is y = a + alpha * b
// (torch.add(a, b, alpha=alpha); alpha 1 and -1 give add and sub exactly),
// `mul` is y = a * b, `prelu` is y = a where a >= 0 else a * b (nn.PReLU with
// its slope b broadcast per channel), and `geglu` is y = a * gelu(b) with exact-erf GELU,
// diffusers' GEGLU once the launcher binds the two halves of its input as a and b.
// Bindings: 0 params, 1 a (read), 2 b (read), 3 y (write).
//
// One invocation per output element of this window. The launcher merges
// dims and windows the tensors, so y is contiguous here (y[out_off + i]) and
// a and b are read through per-dim strides (0 where they broadcast). Dims
// are listed innermost first; those past `rank` have size 1 and are skipped.

// Params, WG, index and offsets: shaders/lib/strided.wgsl.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read> b: array<T>;
@group(0) @binding(3) var<storage, read_write> y: array<T>;

@compute @workgroup_size(WG)
fn add(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= params.n { return; }
    let o = offsets(i);
    y[params.out_off + i] = T(f32(a[o.x]) + params.alpha * f32(b[o.y]));
}

@compute @workgroup_size(WG)
fn mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= params.n { return; }
    let o = offsets(i);
    y[params.out_off + i] = T(f32(a[o.x]) * f32(b[o.y]));
}

@compute @workgroup_size(WG)
fn prelu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= params.n { return; }
    let o = offsets(i);
    let v = f32(a[o.x]);
    y[params.out_off + i] = T(select(v * f32(b[o.y]), v, v >= 0.0));
}

// diffusers GEGLU: `hidden, gate = proj(x).chunk(2, -1); hidden * F.gelu(gate)`.
@compute @workgroup_size(WG)
fn geglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= params.n { return; }
    let o = offsets(i);
    let g = f32(b[o.y]);
    y[params.out_off + i] = T(f32(a[o.x]) * gelu_f32(g));
}
