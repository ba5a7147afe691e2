// Batched matmul C = op(A) · op(B) (+ bias per column) (then activation), as
// `torch.matmul` / `F.linear` (weight [out, in], i.e. B transposed). Portable:
// f32 arithmetic and accumulation, storage T. Bindings: 0 params, 1 a, 2 b,
// 3 bias, 4 c.
//
// Shared-memory tiled GEMM with register blocking: a workgroup computes a
// BM x BN block of C, one invocation a TM x TN micro-tile of it (rows and
// columns strided by BM/TM and BN/TN so neighbouring invocations touch
// neighbouring shared-memory words). Each K-step stages A's [BM, BK] and B's
// [BK, BN] blocks in workgroup memory, zero past the edges, so any M, N, K
// works. Operands are addressed through row/column strides, which is how
// transposes and broadcast batches come for free.

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // Element step between batch items (0 = shared by every item).
    batch_a: u32,
    batch_b: u32,
    batch_c: u32,
    // A[m, k] = a[off_a + m * a_rs + k * a_cs]; B[k, n] = b[off_b + k * b_rs + n * b_cs].
    a_rs: u32,
    a_cs: u32,
    b_rs: u32,
    b_cs: u32,
    // Offsets (elements) of this dispatch's data inside the bound windows.
    off_a: u32,
    off_b: u32,
    off_c: u32,
    off_bias: u32,
    has_bias: u32,
    // 0 none, 1 SiLU, 2 GELU (erf), 3 quick-GELU.
    act: u32,
    // Tiles along N, and in all; workgroups past the last tile exit.
    tiles_n: u32,
    tiles_total: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read> b: array<T>;
@group(0) @binding(3) var<storage, read> bias: array<T>;
@group(0) @binding(4) var<storage, read_write> c: array<T>;

override BM: u32 = 64u;
override BN: u32 = 64u;
override BK: u32 = 16u;
// Must equal (BM / TM) * (BN / TN); the launcher sets all four together.
override WG: u32 = 256u;
const TM: u32 = 4u;
const TN: u32 = 4u;

// [BK][BM + 1] and [BK][BN + 1]: the padding breaks bank conflicts when a
// tile is staged with k as the fast index.
var<workgroup> sa: array<f32, BK * (BM + 1u)>;
var<workgroup> sb: array<f32, BK * (BN + 1u)>;

fn erf_f32(v: f32) -> f32 {
    let x = abs(v);
    if x < 0.5 {
        let z = v * v;
        return v * 1.1283791670955126 * (1.0 + z * (-0.3333333333333333 + z * (0.1 + z * (-0.023809523809523808 + z * (0.004629629629629629 + z * (-0.0007575757575757576))))));
    }
    let t = 1.0 / (1.0 + 0.5 * x);
    let r = t * exp(-x * x - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
    return select(r - 1.0, 1.0 - r, v >= 0.0);
}

fn activate(v: f32) -> f32 {
    switch params.act {
        case 1u: { return v / (1.0 + exp(-v)); }
        case 2u: { return 0.5 * v * (1.0 + erf_f32(v * 0.7071067811865476)); }
        case 3u: { return v / (1.0 + exp(-1.702 * v)); }
        default: { return v; }
    }
}

@compute @workgroup_size(WG)
fn matmul(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let tile = wid.y * nwg.x + wid.x;
    if tile >= params.tiles_total {
        return;
    }
    let m0 = (tile / params.tiles_n) * BM;
    let n0 = (tile % params.tiles_n) * BN;
    let base_a = params.off_a + wid.z * params.batch_a;
    let base_b = params.off_b + wid.z * params.batch_b;
    let base_c = params.off_c + wid.z * params.batch_c;
    let am = params.a_rs;
    let ak = params.a_cs;
    let bk = params.b_rs;
    let bn = params.b_cs;
    // Stage with the contiguous global index fastest across invocations.
    let a_kfast = ak == 1u;
    let b_nfast = bn == 1u;
    let sam = BM + 1u;
    let sbn = BN + 1u;
    // This invocation's micro-tile: rows ty + i * RS, columns tx + j * CS.
    let cols = BN / TN;
    let tx = lid % cols;
    let ty = lid / cols;
    let rs = BM / TM;
    let cs = BN / TN;

    var acc: array<vec4<f32>, TM>;
    for (var i = 0u; i < TM; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    for (var k0 = 0u; k0 < params.k; k0 += BK) {
        for (var e = lid; e < BM * BK; e += WG) {
            let r = select(e % BM, e / BK, a_kfast);
            let q = select(e / BM, e % BK, a_kfast);
            let gm = m0 + r;
            let gk = k0 + q;
            var v = 0.0;
            if gm < params.m && gk < params.k {
                v = f32(a[base_a + gm * am + gk * ak]);
            }
            sa[q * sam + r] = v;
        }
        for (var e = lid; e < BK * BN; e += WG) {
            let q = select(e % BK, e / BN, b_nfast);
            let s = select(e / BK, e % BN, b_nfast);
            let gk = k0 + q;
            let gn = n0 + s;
            var v = 0.0;
            if gk < params.k && gn < params.n {
                v = f32(b[base_b + gk * bk + gn * bn]);
            }
            sb[q * sbn + s] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let ra = kk * sam + ty;
            let rb = kk * sbn + tx;
            let bv = vec4<f32>(sb[rb], sb[rb + cs], sb[rb + 2u * cs], sb[rb + 3u * cs]);
            for (var i = 0u; i < TM; i++) {
                acc[i] = fma(vec4<f32>(sa[ra + i * rs]), bv, acc[i]);
            }
        }
        workgroupBarrier();
    }

    for (var i = 0u; i < TM; i++) {
        let row = m0 + ty + i * rs;
        if row >= params.m {
            continue;
        }
        for (var j = 0u; j < TN; j++) {
            let col = n0 + tx + j * cs;
            if col < params.n {
                var v = acc[i][j];
                if params.has_bias != 0u {
                    v += f32(bias[params.off_bias + col]);
                }
                c[base_c + row * params.n + col] = T(activate(v));
            }
        }
    }
}
