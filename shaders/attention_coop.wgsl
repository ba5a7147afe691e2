// Scaled dot-product attention on cooperative matrices (tensor cores): the
// same operation, layout, parameters and bindings as attention.wgsl (q, k, v
// column ranges of [B, L, row] tensors; out [B, Lq, H*D]), for f16 tensors.
// Bindings: 0 params, 1 q, 2 k, 3 v (read), 4 out (write).
//
// One workgroup = 4 subgroups computes BQ = 64 query rows of one (batch,
// head); each subgroup owns 16 rows. The head dim is padded with zeros to
// DT tiles of 16. Keys go by in blocks of 16, staged in workgroup memory.
//
// Two passes over the keys instead of an online softmax: a coop accumulator's
// layout is opaque, so its rows cannot be rescaled when the running max
// grows. Pass 1 computes S = Q K^T per block and, one invocation per row,
// the row's max m and sum l of exp2(S * scale - m). Pass 2 computes S again,
// P = exp2(S * scale - m) (in [0, 1], stored f16 like FlashAttention's P) and
// accumulates O += P V on the tensor cores with m fixed; the end divides by
// l. The extra Q K^T costs half again the FLOPs, on tensor cores.
//
// Layout rules measured on the H100 (see DESIGN.md): coopLoadT reads
// row-major memory, coopLoad column-major. Q and P are row-major A tiles;
// K^T is K's rows read column-major; V is a row-major B tile. As in
// matmul_coop.wgsl, accumulators are loaded from a zeroed tile and every
// stride is a `let` (naga 30.0.1's SPIR-V writer panics otherwise).

// Params and bindings: shaders/lib/attention_io.wgsl.

// Subgroup size; the launcher sets it to the adapter's (fixed) size.
override SG: u32 = 32u;
// Head dimension, 1..=160, and its 16-wide tiles (at most 10).
override HEAD_DIM: u32 = 64u;
override DT: u32 = (HEAD_DIM + 15u) / 16u;
// Row stride of the staged Q, K and V blocks: the padded head dim plus 8
// halves (rows stay 16-byte aligned, and spread over memory banks).
override DS: u32 = DT * 16u + 8u;

const BQ: u32 = 64u;
const BK: u32 = 16u;
const M_START: f32 = -1.0e30;

// Sized for the largest head dim (DS = 168): naga 30.0.1's SPIR-V writer
// panics on coop loads from workgroup arrays whose length is an override.
var<workgroup> qs: array<f16, 10752>; // BQ * 168
var<workgroup> ks: array<f16, 2688>; // BK * 168
var<workgroup> vs: array<f16, 2688>;
// Per subgroup a 16x16 f32 tile: S of the current block, a zero source for
// the accumulators, and the epilogue's bounce buffer.
var<workgroup> st: array<f32, 1024>;
// Per subgroup P of the current block, 16x16 f16 with rows padded to 24.
var<workgroup> ps: array<f16, 1536>;
var<workgroup> row_l: array<f32, BQ>;

// Stages key block k0 of K (and V when `with_v`), zero past the keys and the head dim.
fn stage_kv(lid: u32, k0: u32, k_base: u32, v_base: u32, with_v: bool) {
    let width = DT * 16u;
    for (var e = lid; e < BK * width; e += 4u * SG) {
        let j = e / width;
        let d = e % width;
        var kv = 0.0h;
        var vv = 0.0h;
        if k0 + j < params.lk && d < HEAD_DIM {
            kv = f16(k[k_base + (k0 + j) * params.k_rs + d]);
            if with_v {
                vv = f16(v[v_base + (k0 + j) * params.v_rs + d]);
            }
        }
        ks[j * DS + d] = kv;
        if with_v {
            vs[j * DS + d] = vv;
        }
    }
}

// S (16 rows of this subgroup x 16 keys) = Q K^T over the DT tiles of the head dim.
fn scores(sg: u32, zero: coop_mat16x16<f32, C>) -> coop_mat16x16<f32, C> {
    var s = zero;
    let stride = DS;
    for (var t = 0u; t < DT; t++) {
        let qoff = sg * 16u * DS + t * 16u;
        let koff = t * 16u;
        let qa = coopLoadT<coop_mat16x16<f16, A>>(&qs[qoff], stride);
        // B[d, key] = K[key, d]: K's rows read column-major.
        let kb = coopLoad<coop_mat16x16<f16, B>>(&ks[koff], stride);
        s = coopMultiplyAdd(qa, kb, s);
    }
    return s;
}

// O tile t (16 rows x 16 channels) += P V[:, 16t..16t+16].
fn pv(acc: coop_mat16x16<f32, C>, sg: u32, t: u32) -> coop_mat16x16<f32, C> {
    let pstride = 24u;
    let vstride = DS;
    let poff = sg * 384u;
    let voff = t * 16u;
    let pa = coopLoadT<coop_mat16x16<f16, A>>(&ps[poff], pstride);
    let vb = coopLoadT<coop_mat16x16<f16, B>>(&vs[voff], vstride);
    return coopMultiplyAdd(pa, vb, acc);
}

// Writes O tile t through the subgroup's f32 tile, divided by each row's sum.
fn store_out(acc: coop_mat16x16<f32, C>, sg: u32, sl: u32, t: u32, q0: u32, o_base: u32, stride: u32) {
    let off = sg * 256u;
    let tstride = 16u;
    coopStoreT(acc, &st[off], tstride);
    workgroupBarrier();
    for (var e = sl; e < 256u; e += SG) {
        let r = sg * 16u + e / 16u;
        let d = t * 16u + e % 16u;
        if q0 + r < params.lq && d < HEAD_DIM {
            out[o_base + (q0 + r) * stride + d] = T(st[off + e] / row_l[r]);
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(4u * SG)
fn attention(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sgid: u32,
    @builtin(subgroup_invocation_id) sl: u32,
) {
    // Query rows q0.. of head wid.y of batch item wid.z.
    let q0 = wid.x * BQ;
    let at = head_bases(wid.z, wid.y);
    let causal = params.causal != 0u;
    let stride = params.heads * HEAD_DIM;
    let sg = sgid % 4u;
    // Invocation sl < 16 of subgroup sg keeps the statistics of row sg * 16 + sl.
    let my_row = sg * 16u + sl;

    // Stage Q (zero past the rows and the head dim) and zero the tiles.
    let width = DT * 16u;
    for (var e = lid; e < BQ * width; e += 4u * SG) {
        let r = e / width;
        let d = e % width;
        var val = 0.0h;
        if q0 + r < params.lq && d < HEAD_DIM {
            val = f16(q[at.q + (q0 + r) * params.q_rs + d]);
        }
        qs[r * DS + d] = val;
    }
    for (var e = lid; e < 1024u; e += 4u * SG) {
        st[e] = 0.0;
    }
    workgroupBarrier();
    let zstride = 16u;
    let zoff = sg * 256u;
    let zero = coopLoadT<coop_mat16x16<f32, C>>(&st[zoff], zstride);
    workgroupBarrier();

    // With the causal mask no row of this block sees a key past its last row.
    var k_end = params.lk;
    if causal {
        k_end = min(params.lk, q0 + BQ);
    }

    // Pass 1: each row's max and sum of exp2(s - max), online over the blocks.
    var m = M_START;
    var l = 0.0;
    for (var k0 = 0u; k0 < k_end; k0 += BK) {
        stage_kv(lid, k0, at.k, at.v, false);
        workgroupBarrier();
        let s = scores(sg, zero);
        let tstride = 16u;
        let soff = sg * 256u;
        coopStoreT(s, &st[soff], tstride);
        workgroupBarrier();
        if sl < 16u {
            var m_new = m;
            for (var j = 0u; j < BK; j++) {
                let key = k0 + j;
                if key < params.lk && !(causal && key > q0 + my_row) {
                    m_new = max(m_new, st[sg * 256u + sl * 16u + j] * params.scale_log2);
                }
            }
            var sum = 0.0;
            for (var j = 0u; j < BK; j++) {
                let key = k0 + j;
                if key < params.lk && !(causal && key > q0 + my_row) {
                    sum += exp2(st[sg * 256u + sl * 16u + j] * params.scale_log2 - m_new);
                }
            }
            l = l * exp2(m - m_new) + sum;
            m = m_new;
        }
        // The next block overwrites the staged keys and the score tile.
        workgroupBarrier();
    }
    if sl < 16u {
        row_l[my_row] = l;
    }

    // Pass 2: O = sum over blocks of exp2(S * scale - m) V, m fixed.
    var o0 = zero;
    var o1 = zero;
    var o2 = zero;
    var o3 = zero;
    var o4 = zero;
    var o5 = zero;
    var o6 = zero;
    var o7 = zero;
    var o8 = zero;
    var o9 = zero;
    for (var k0 = 0u; k0 < k_end; k0 += BK) {
        stage_kv(lid, k0, at.k, at.v, true);
        workgroupBarrier();
        let s = scores(sg, zero);
        let tstride = 16u;
        let soff = sg * 256u;
        coopStoreT(s, &st[soff], tstride);
        workgroupBarrier();
        if sl < 16u {
            for (var j = 0u; j < BK; j++) {
                let key = k0 + j;
                var p = 0.0;
                if key < params.lk && !(causal && key > q0 + my_row) {
                    p = exp2(st[sg * 256u + sl * 16u + j] * params.scale_log2 - m);
                }
                ps[sg * 384u + sl * 24u + j] = f16(p);
            }
        }
        workgroupBarrier();
        o0 = pv(o0, sg, 0u);
        if DT > 1u {
            o1 = pv(o1, sg, 1u);
        }
        if DT > 2u {
            o2 = pv(o2, sg, 2u);
        }
        if DT > 3u {
            o3 = pv(o3, sg, 3u);
        }
        if DT > 4u {
            o4 = pv(o4, sg, 4u);
        }
        if DT > 5u {
            o5 = pv(o5, sg, 5u);
        }
        if DT > 6u {
            o6 = pv(o6, sg, 6u);
        }
        if DT > 7u {
            o7 = pv(o7, sg, 7u);
        }
        if DT > 8u {
            o8 = pv(o8, sg, 8u);
        }
        if DT > 9u {
            o9 = pv(o9, sg, 9u);
        }
        workgroupBarrier();
    }

    store_out(o0, sg, sl, 0u, q0, at.o, stride);
    if DT > 1u {
        store_out(o1, sg, sl, 1u, q0, at.o, stride);
    }
    if DT > 2u {
        store_out(o2, sg, sl, 2u, q0, at.o, stride);
    }
    if DT > 3u {
        store_out(o3, sg, sl, 3u, q0, at.o, stride);
    }
    if DT > 4u {
        store_out(o4, sg, sl, 4u, q0, at.o, stride);
    }
    if DT > 5u {
        store_out(o5, sg, sl, 5u, q0, at.o, stride);
    }
    if DT > 6u {
        store_out(o6, sg, sl, 6u, q0, at.o, stride);
    }
    if DT > 7u {
        store_out(o7, sg, sl, 7u, q0, at.o, stride);
    }
    if DT > 8u {
        store_out(o8, sg, sl, 8u, q0, at.o, stride);
    }
    if DT > 9u {
        store_out(o9, sg, sl, 9u, q0, at.o, stride);
    }
}
