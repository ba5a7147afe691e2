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

// (src, dst) offsets of iterated element i, peeling coordinates innermost first.
fn offsets(i: u32) -> vec2<u32> {
    var rem = i;
    var o = vec2<u32>(params.src_off, params.dst_off);
    var c = rem % params.n0;
    rem = rem / params.n0;
    o += c * vec2<u32>(params.s0, params.t0);
    if params.rank > 1u {
        c = rem % params.n1;
        rem = rem / params.n1;
        o += c * vec2<u32>(params.s1, params.t1);
    }
    if params.rank > 2u {
        c = rem % params.n2;
        rem = rem / params.n2;
        o += c * vec2<u32>(params.s2, params.t2);
    }
    if params.rank > 3u {
        c = rem % params.n3;
        rem = rem / params.n3;
        o += c * vec2<u32>(params.s3, params.t3);
    }
    if params.rank > 4u {
        c = rem % params.n4;
        rem = rem / params.n4;
        o += c * vec2<u32>(params.s4, params.t4);
    }
    if params.rank > 5u {
        o += rem * vec2<u32>(params.s5, params.t5);
    }
    return o;
}

@compute @workgroup_size(WG)
fn copy(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if i >= params.n { return; }
    let o = offsets(i);
    dst[o.y] = src[o.x];
}
