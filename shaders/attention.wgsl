// Scaled dot-product attention (torch.nn.functional.scaled_dot_product_attention
// with heads split out of the channel axis, as diffusers' Attention does),
// memory-efficient in the FlashAttention way: the Lq x Lk score matrix never
// exists; key blocks stream through workgroup memory with an online softmax.
//
// Layout: q [B, Lq, H*D], k and v [B, Lk, H*D], out [B, Lq, H*D]; head h owns
// channels h*D .. h*D + D of every row. q, k and v may be column ranges of
// wider rows (one projection [B, L, 3*H*D] holding q, k and v): each has a
// row stride and an element offset. Grid: (ceil(Lq / BQ), H, B); one
// workgroup holds BQ query rows of one (batch, head). Per block of BK keys:
//   1. S = Q K^T for the block, D in chunks of DK: each chunk of Q and K is
//      staged in workgroup memory, each invocation accumulates a 4x4 tile of S.
//   2. S (scaled by scale * log2 e, masked) goes to workgroup memory; one
//      invocation per row updates the running max m and sum l, turns S into
//      P = exp2(S - m_new) and records alpha = exp2(m_old - m_new).
//   3. The V block is staged; each invocation owns 4 rows x ceil(D/8) output
//      channels in registers: acc = acc * alpha + P V.
// At the end out = acc / l. Arithmetic and workgroup memory are f32.
// Bindings: 0 params, 1 q, 2 k, 3 v (read), 4 out (write).

// Params and bindings: shaders/lib/attention_io.wgsl.

// Head dimension, 1..=DMAX; a pipeline per value so the per-invocation loops
// have constant trip counts.
override HEAD_DIM: u32 = 64u;
// Output channels each invocation owns (channels lane, lane + 8, ...).
override DPT: u32 = (HEAD_DIM + 7u) / 8u;
// Width of the D chunks of step 1: 16 halves the barriers, 8 avoids padding
// head dims such as 40. The launcher uses 8 or 16; `stage` must hold
// 96 rows of DK + 1.
override DK: u32 = 16u;

const BQ: u32 = 64u;
const BK: u32 = 32u;
const WG: u32 = 128u;
const DMAX: u32 = 160u;
const DPT_MAX: u32 = DMAX / 8u;
// Padded row strides: keep the invocations of a warp on distinct banks.
override KS: u32 = DK + 1u;
const SP: u32 = BK + 1u;
// Running max before any key is seen; masked scores are far below it, so a
// fully masked block contributes exp2(-huge) = 0 and never inf - inf.
const M_START: f32 = -1.0e30;
const MASKED: f32 = -3.0e38;

// Q and K chunks ([BQ][KS] then [BK][KS]) during step 1, the V block
// ([BK][HEAD_DIM]) during step 3.
var<workgroup> stage: array<f32, BK * DMAX>;
var<workgroup> scores: array<f32, BQ * SP>;
var<workgroup> row_m: array<f32, BQ>;
var<workgroup> row_l: array<f32, BQ>;
var<workgroup> row_alpha: array<f32, BQ>;

// Element (row, d) of this head's Q (from_k false) or K, whose first element
// is at base; zero past the edges.
fn load_qk(from_k: bool, base: u32, row: u32, d: u32) -> f32 {
    if d >= HEAD_DIM || row >= select(params.lq, params.lk, from_k) {
        return 0.0;
    }
    if from_k {
        return f32(k[base + row * params.k_rs + d]);
    }
    return f32(q[base + row * params.q_rs + d]);
}

@compute @workgroup_size(WG)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // Query rows q0.. of head wid.y of batch item wid.z.
    let q0 = wid.x * BQ;
    let at = head_bases(wid.z, wid.y);
    let causal = params.causal != 0u;
    let stride = params.heads * HEAD_DIM;
    // Invocation (tr, tc) owns score rows tr + 16i, keys tc + 8j, and output
    // rows tr + 16i, channels tc + 8kk.
    let tr = lid / 8u;
    let tc = lid % 8u;

    var acc: array<f32, 4u * DPT_MAX>;
    for (var e = 0u; e < 4u * DPT_MAX; e++) {
        acc[e] = 0.0;
    }
    if lid < BQ {
        row_m[lid] = M_START;
        row_l[lid] = 0.0;
    }

    // With the causal mask no row of this block sees a key past its last row.
    var k_end = params.lk;
    if causal {
        k_end = min(params.lk, q0 + BQ);
    }
    for (var k0 = 0u; k0 < k_end; k0 += BK) {
        // 1. S = Q K^T over D in chunks of DK.
        var s: array<f32, 16>;
        for (var e = 0u; e < 16u; e++) {
            s[e] = 0.0;
        }
        for (var d0 = 0u; d0 < HEAD_DIM; d0 += DK) {
            for (var e = lid; e < BQ * DK; e += WG) {
                stage[(e / DK) * KS + e % DK] = load_qk(false, at.q, q0 + e / DK, d0 + e % DK);
            }
            for (var e = lid; e < BK * DK; e += WG) {
                stage[BQ * KS + (e / DK) * KS + e % DK] = load_qk(true, at.k, k0 + e / DK, d0 + e % DK);
            }
            workgroupBarrier();
            for (var dd = 0u; dd < DK; dd++) {
                var qv: array<f32, 4>;
                var kv: array<f32, 4>;
                for (var i = 0u; i < 4u; i++) {
                    qv[i] = stage[(tr + 16u * i) * KS + dd];
                    kv[i] = stage[BQ * KS + (tc + 8u * i) * KS + dd];
                }
                for (var i = 0u; i < 4u; i++) {
                    for (var j = 0u; j < 4u; j++) {
                        s[i * 4u + j] += qv[i] * kv[j];
                    }
                }
            }
            workgroupBarrier();
        }

        // 2. Scale and mask; online softmax, one invocation per row.
        for (var i = 0u; i < 4u; i++) {
            let r = tr + 16u * i;
            for (var j = 0u; j < 4u; j++) {
                let c = tc + 8u * j;
                let key = k0 + c;
                var val = s[i * 4u + j] * params.scale_log2;
                if key >= params.lk || (causal && key > q0 + r) {
                    val = MASKED;
                }
                scores[r * SP + c] = val;
            }
        }
        workgroupBarrier();
        if lid < BQ {
            let m_old = row_m[lid];
            var m_new = m_old;
            for (var j = 0u; j < BK; j++) {
                m_new = max(m_new, scores[lid * SP + j]);
            }
            var sum = 0.0;
            for (var j = 0u; j < BK; j++) {
                let p = exp2(scores[lid * SP + j] - m_new);
                scores[lid * SP + j] = p;
                sum += p;
            }
            let alpha = exp2(m_old - m_new);
            row_m[lid] = m_new;
            row_l[lid] = row_l[lid] * alpha + sum;
            row_alpha[lid] = alpha;
        }
        // 3. Stage V (step 1 is done with the Q and K chunks), then acc = acc * alpha + P V.
        for (var e = lid; e < BK * HEAD_DIM; e += WG) {
            let j = k0 + e / HEAD_DIM;
            var val = 0.0;
            if j < params.lk {
                val = f32(v[at.v + j * params.v_rs + e % HEAD_DIM]);
            }
            stage[e] = val;
        }
        workgroupBarrier();
        for (var i = 0u; i < 4u; i++) {
            let alpha = row_alpha[tr + 16u * i];
            for (var kk = 0u; kk < DPT; kk++) {
                acc[i * DPT_MAX + kk] *= alpha;
            }
        }
        for (var j = 0u; j < BK; j++) {
            var p: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                p[i] = scores[(tr + 16u * i) * SP + j];
            }
            for (var kk = 0u; kk < DPT; kk++) {
                let d = tc + 8u * kk;
                if d < HEAD_DIM {
                    let vv = stage[j * HEAD_DIM + d];
                    for (var i = 0u; i < 4u; i++) {
                        acc[i * DPT_MAX + kk] += p[i] * vv;
                    }
                }
            }
        }
        // The next block overwrites `stage` and `scores`.
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let r = tr + 16u * i;
        if q0 + r < params.lq {
            let inv_l = 1.0 / row_l[r];
            for (var kk = 0u; kk < DPT; kk++) {
                let d = tc + 8u * kk;
                if d < HEAD_DIM {
                    out[at.o + (q0 + r) * stride + d] = T(acc[i * DPT_MAX + kk] * inv_l);
                }
            }
        }
    }
}
