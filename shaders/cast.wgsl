// Casts between f32 and f16 storage. Needs f16 support, so it has only the
// F16 variant (T = f16). Bindings: 0 params; f32_to_f16 reads 1, writes 2;
// f16_to_f32 reads 3, writes 4.

struct Params {
    n: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src32: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst16: array<T>;

// The other direction has its own slots: one module may not declare two
// variables at one binding.
@group(0) @binding(3) var<storage, read> src16: array<T>;
@group(0) @binding(4) var<storage, read_write> dst32: array<f32>;

const WG: u32 = 256u;

@compute @workgroup_size(WG)
fn f32_to_f16(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if i >= params.n { return; }
    // Values beyond f16's range saturate instead of becoming infinity.
    dst16[i] = T(clamp(src32[i], -65504.0, 65504.0));
}

@compute @workgroup_size(WG)
fn f16_to_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if i >= params.n { return; }
    dst32[i] = f32(src16[i]);
}
