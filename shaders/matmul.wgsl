// Batched matmul C = act(op(A) · op(B) + bias) + residual, as `torch.matmul`
// / `F.linear` (weight [out, in], i.e. B transposed). Portable: f32
// arithmetic and accumulation, storage T. Bindings: 0 params, 1 a, 2 b,
// 3 bias, 4 c, 5 res.
//
// The epilogue fuses what usually follows a product: a bias per column (a
// linear layer) or per row (a 1x1 conv written channels-first), an
// activation, a residual of C's shape added last (`x + f(x)`), or GEGLU on
// interleaved columns: C[r, j] = P[r, 2j] * gelu(P[r, 2j + 1]), so C has
// N / 2 columns (the launcher interleaves the weight's value and gate rows).
//
// Shared-memory tiled GEMM with register blocking: a workgroup computes a
// BM x BN block of C; each invocation an 8x8 micro-tile made of two 4-row
// by two 4-column groups, half a block apart, so its shared-memory reads are
// four vec4s per k and neighbouring invocations read neighbouring vec4s.
// Each K-step stages A's [BM, BK] and B's [BK, BN] blocks in workgroup
// memory (k-major, zero past the edges), so any M, N, K works. Operands are
// addressed through row and column strides, which is how transposes and
// shared (broadcast) batch operands come for free; staging reads global
// memory along whichever index is contiguous.

// MatmulParams: shaders/lib/matmul_params.wgsl.
@group(0) @binding(0) var<uniform> params: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read> b: array<T>;
@group(0) @binding(3) var<storage, read> bias: array<T>;
@group(0) @binding(4) var<storage, read_write> c: array<T>;
@group(0) @binding(5) var<storage, read> res: array<T>;

// `Params::act` for GEGLU on interleaved columns (not an `apply_activation` code).
const ACT_GEGLU: u32 = 4u;

// BM, BN, BK, WG, the staging arrays sa, sb and the micro-kernel: shaders/lib/tile_gemm.wgsl.

// A[gm, gk], zero outside the matrix.
fn load_a(base: u32, gm: u32, gk: u32) -> f32 {
    if gm < params.m && gk < params.k {
        return f32(a[base + gm * params.a_rs + gk * params.a_cs]);
    }
    return 0.0;
}

fn load_b(base: u32, gk: u32, gn: u32) -> f32 {
    if gk < params.k && gn < params.n {
        return f32(b[base + gk * params.b_rs + gn * params.b_cs]);
    }
    return 0.0;
}

// A[gm..gm + 4, gk] and B[gk, gn..gn + 4] as vec4s, zero outside the matrix.
fn load_a4(base: u32, gm: u32, gk: u32) -> vec4<f32> {
    return vec4<f32>(load_a(base, gm, gk), load_a(base, gm + 1u, gk), load_a(base, gm + 2u, gk), load_a(base, gm + 3u, gk));
}

fn load_b4(base: u32, gk: u32, gn: u32) -> vec4<f32> {
    return vec4<f32>(load_b(base, gk, gn), load_b(base, gk, gn + 1u), load_b(base, gk, gn + 2u), load_b(base, gk, gn + 3u));
}

// Staging pass element e over a block of `per_k` vec4s by BK as (vec4
// index, k), k fastest when the operand is contiguous along k so global
// reads are too.
fn staged_at(e: u32, per_k: u32, kfast: bool) -> vec2<u32> {
    return select(vec2<u32>(e % per_k, e / per_k), vec2<u32>(e / BK, e % BK), kfast);
}

// Writes four consecutive columns (col a multiple of 4) of one row of C
// through the epilogue; base_c / base_r: this batch item's C / res.
fn store4(base_c: u32, base_r: u32, row: u32, col: u32, acc: vec4<f32>) {
    if row >= params.m {
        return;
    }
    var v = acc;
    if params.has_bias != 0u {
        for (var j = 0u; j < 4u; j++) {
            if col + j < params.n {
                v[j] += f32(bias[params.off_bias + row * params.bias_rs + (col + j) * params.bias_cs]);
            }
        }
    }
    if params.act == ACT_GEGLU {
        // N is even, so a (value, gate) pair is whole or entirely past the edge.
        for (var j = 0u; j < 4u; j += 2u) {
            if col + j < params.n {
                c[base_c + row * params.c_rs + (col + j) / 2u] = T(v[j] * gelu_f32(v[j + 1u]));
            }
        }
        return;
    }
    for (var j = 0u; j < 4u; j++) {
        let cj = col + j;
        if cj < params.n {
            var x = apply_activation(v[j], params.act);
            if params.has_res != 0u {
                x += f32(res[base_r + row * params.c_rs + cj]);
            }
            c[base_c + row * params.c_rs + cj] = T(x);
        }
    }
}

// The micro-kernel's epilogue hook (shaders/lib/tile_gemm.wgsl): bases = (base_c, base_r, -, -).
fn store_at(bases: vec4<u32>, row: u32, col: u32, v: vec4<f32>) {
    store4(bases.x, bases.y, row, col, v);
}

@compute @workgroup_size(WG)
fn matmul(ids: BlockIds) {
    let lid = ids.lid;
    let origin = block_origin(ids);
    if origin.z == 0u {
        return;
    }
    let m0 = origin.x;
    let n0 = origin.y;
    let base_a = params.off_a + ids.wid.z * params.batch_a;
    let base_b = params.off_b + ids.wid.z * params.batch_b;
    let base_c = params.off_c + ids.wid.z * params.batch_c;
    let base_r = params.off_res + ids.wid.z * params.batch_c;
    // Stage along the contiguous global index.
    let a_kfast = params.a_cs == 1u;
    let b_kfast = params.b_cs != 1u;
    let qa = BM / 4u; // vec4s per k-row of sa (plus one of padding)
    let qb = BN / 4u;
    let sra = qa + 1u;
    let srb = qb + 1u;
    // This invocation's rows: 4 * ty + (0..4) and BM / 2 + 4 * ty + (0..4);
    // columns likewise with tx.
    let tx = lid % (BN / 8u);
    let ty = lid / (BN / 8u);

    var acc = Acc8x8();

    for (var k0 = 0u; k0 < params.k; k0 += BK) {
        // A block: (BM / 4) x BK vec4s, each 4 rows at one k.
        for (var e = lid; e < qa * BK; e += WG) {
            let at = staged_at(e, qa, a_kfast);
            sa[at.y * sra + at.x] = load_a4(base_a, m0 + 4u * at.x, k0 + at.y);
        }
        // B block: BK x (BN / 4) vec4s, each 4 columns at one k.
        for (var e = lid; e < qb * BK; e += WG) {
            let at = staged_at(e, qb, b_kfast);
            sb[at.y * srb + at.x] = load_b4(base_b, k0 + at.y, n0 + 4u * at.x);
        }
        workgroupBarrier();
        accumulate_block(&acc, ty, tx);
        workgroupBarrier();
    }

    let r0 = m0 + 4u * ty;
    let r1 = r0 + BM / 2u;
    let col0 = n0 + 4u * tx;
    let col1 = col0 + BN / 2u;
    store_block(acc, r0, r1, col0, col1, vec4<u32>(base_c, base_r, 0u, 0u));
}
