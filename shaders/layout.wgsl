// Strided copy: dst[dst_off + sum c_d * t_d] = src[src_off + sum c_d * s_d]
// over an iteration shape of up to 6 dims. Pure data movement (no
// arithmetic, so bitwise exact). The launchers express with it what
// PyTorch does with views and `.contiguous()`: slicing (narrow/chunk),
// permute/transpose, concat (one launch per input, writing its slab of the
// output), nearest upsampling (F.interpolate, stride 0 along the repeats)
// and F.pixel_shuffle / F.pixel_unshuffle.
// Bindings: 0 params, 1 src (read), 2 dst (write).
//
// One invocation per iterated element. Dims are listed innermost first;
// those past `rank` have size 1 and are skipped.

// Params, WG, index and offsets: shaders/lib/strided.wgsl.

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<T>;
@group(0) @binding(2) var<storage, read_write> dst: array<T>;

@compute @workgroup_size(WG)
fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wid, nwg, lid);
    if i >= params.n { return; }
    let o = offsets(i);
    dst[o.y] = src[o.x];
}
