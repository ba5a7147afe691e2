// Walking an iteration shape of up to 6 dims (innermost first) over two
// operands, each with its own strides: what the broadcasting binary ops
// (binary.wgsl) and the strided copy (layout.wgsl) share.

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
