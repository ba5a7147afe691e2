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

struct Params {
    n: u32,
    rank: u32,
    src_off: u32,
    dst_off: u32,
    n0: u32,
    n1: u32,
    n2: u32,
    n3: u32,
    n4: u32,
    n5: u32,
    s0: u32,
    s1: u32,
    s2: u32,
    s3: u32,
    s4: u32,
    s5: u32,
    t0: u32,
    t1: u32,
    t2: u32,
    t3: u32,
    t4: u32,
    t5: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<T>;
@group(0) @binding(2) var<storage, read_write> dst: array<T>;

const WG: u32 = 256u;

// (src, dst) offsets of iterated element i (shaders/lib/strided.wgsl).
fn offsets(i: u32) -> vec2<u32> {
    let n = array<u32, 6>(params.n0, params.n1, params.n2, params.n3, params.n4, params.n5);
    let s = array<u32, 6>(params.s0, params.s1, params.s2, params.s3, params.s4, params.s5);
    let t = array<u32, 6>(params.t0, params.t1, params.t2, params.t3, params.t4, params.t5);
    return strided_offsets(i, params.rank, vec2<u32>(params.src_off, params.dst_off), n, s, t);
}

@compute @workgroup_size(WG)
fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if i >= params.n { return; }
    let o = offsets(i);
    dst[o.y] = src[o.x];
}
