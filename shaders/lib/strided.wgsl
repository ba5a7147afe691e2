// Walking an iteration shape of up to 6 dims (innermost first) over two
// operands, each with its own strides: what the broadcasting binary ops
// (binary.wgsl) and the strided copy (layout.wgsl) share, with their
// parameter block (engine/gpu/src/ops/layout.rs, StridedParams).

// n elements over rank dims (n0.., innermost first); the two strided
// operands' element offsets in their windows (x_off, y_off) and strides
// (s0.., t0..); a contiguous output's offset (out_off) and a scalar (alpha),
// which only the binary ops use.
struct Params {
    n: u32,
    rank: u32,
    x_off: u32,
    y_off: u32,
    out_off: u32,
    alpha: f32,
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

const WG: u32 = 256u;

// The invocation's element: the grid may be 2-D when there are more than 65535 workgroups.
fn index(wid: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return (wid.y * nwg.x + wid.x) * WG + lid;
}

// Offsets into the two strided operands of iterated element i.
fn offsets(i: u32) -> vec2<u32> {
    let n = array<u32, 6>(params.n0, params.n1, params.n2, params.n3, params.n4, params.n5);
    let s = array<u32, 6>(params.s0, params.s1, params.s2, params.s3, params.s4, params.s5);
    let t = array<u32, 6>(params.t0, params.t1, params.t2, params.t3, params.t4, params.t5);
    return strided_offsets(i, params.rank, vec2<u32>(params.x_off, params.y_off), n, s, t);
}

// Offsets into the two operands of iterated element i, peeling coordinates
// off innermost first: sizes n, strides sx (first operand) and sy (second),
// starting from base. Dims past `rank` have size 1 and are skipped, so
// low-rank (merged) launches do not pay for divisions by 1.
fn strided_offsets(i: u32, rank: u32, base: vec2<u32>, n: array<u32, 6>, sx: array<u32, 6>, sy: array<u32, 6>) -> vec2<u32> {
    // Unrolled with constant indices: a loop over the arrays made lavapipe's
    // strided copies twice as slow.
    var rem = i;
    var o = base + (rem % n[0]) * vec2<u32>(sx[0], sy[0]);
    rem = rem / n[0];
    if rank > 1u {
        o += (rem % n[1]) * vec2<u32>(sx[1], sy[1]);
        rem = rem / n[1];
    }
    if rank > 2u {
        o += (rem % n[2]) * vec2<u32>(sx[2], sy[2]);
        rem = rem / n[2];
    }
    if rank > 3u {
        o += (rem % n[3]) * vec2<u32>(sx[3], sy[3]);
        rem = rem / n[3];
    }
    if rank > 4u {
        o += (rem % n[4]) * vec2<u32>(sx[4], sy[4]);
        rem = rem / n[4];
    }
    if rank > 5u {
        o += rem * vec2<u32>(sx[5], sy[5]);
    }
    return o;
}
