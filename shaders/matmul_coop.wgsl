// Batched matmul and 2-D convolution on cooperative matrices (tensor cores).
// `matmul`: C = act(op(A) · op(B) + bias) + residual, like `torch.matmul` /
// `F.linear`, with matmul.wgsl's epilogue (bias per row or column, GEGLU on
// interleaved columns); bindings 0 params, 1 a, 2 b, 3 bias, 4 c, 10 res.
// `conv2d`: `F.conv2d` (groups = 1) as an implicit GEMM, the same scheme and
// epilogue as conv2d.wgsl; bindings 5 cparams, 6 cx, 7 cw, 8 cbias, 9 cy,
// 11 cres (its own numbers, so the two entry points never share a slot).
// Variant CoopF16 only: tensors are f16 in memory, products accumulate in
// f32 (`coop_mat16x16<f32, C>`), results go out through an f32 tile.
//
// One workgroup = 4 subgroups of SG invocations computes a 128x128 block of
// C; each subgroup owns a 64x64 quadrant, 4x4 tiles of 16x16, so it keeps 16
// accumulators. Every K-step of 32 stages A and B in workgroup memory with
// zeros past the edges, so any M, N, K works and no load leaves the tensor.
// A tile is staged in the layout its global memory already has (rows or
// columns contiguous), so the staging writes stay coalesced; the coop load
// then reads it row-major (coopLoadT) or column-major (coopLoad) to match.
//
// naga 30.0.1's SPIR-V writer panics on coop accumulators made with the zero
// constructor and on strides written inline from uniform fields, so every
// stride is a `let` and the accumulators are loaded from a zeroed tile.

// MatmulParams and ConvParams: shaders/lib/matmul_params.wgsl, conv_params.wgsl.
@group(0) @binding(0) var<uniform> params: MatmulParams;
@group(0) @binding(1) var<storage, read> a: array<T>;
@group(0) @binding(2) var<storage, read> b: array<T>;
@group(0) @binding(3) var<storage, read> bias: array<T>;
@group(0) @binding(4) var<storage, read_write> c: array<T>;
@group(0) @binding(10) var<storage, read> res: array<T>;

// `Params::act` for GEGLU on interleaved columns (not an `apply_activation` code).
const ACT_GEGLU: u32 = 4u;

// Subgroup size; the launcher sets it to the adapter's (fixed) size.
override SG: u32 = 32u;

const BM: u32 = 128u;
const BN: u32 = 128u;
const BK: u32 = 32u;
// Staging row strides, padded by 8 halves (16 bytes: coop loads need 16-byte
// aligned rows) to spread rows over memory banks.
const SK: u32 = 40u; // a tile stored [BM][SK] or b tile stored [BN][SK] (k contiguous)
const SA: u32 = 136u; // a tile stored [BK][SA] (m contiguous)
const SB: u32 = 136u; // b tile stored [BK][SB] (n contiguous)

var<workgroup> sa: array<f16, 5120>; // max(BM * SK, BK * SA)
var<workgroup> sb: array<f16, 5120>; // max(BN * SK, BK * SB)
// One 16x16 f32 tile per subgroup: the zero source for the accumulators and
// the bounce buffer for the epilogue (bias, activation, f16 conversion).
var<workgroup> sc: array<f32, 1024>;

// The A tile (rows r0.., k-step kk) of the staged block: row-major when A's
// k is contiguous, column-major otherwise. The branch is on a uniform.
fn load_a(r0: u32, kk: u32) -> coop_mat16x16<f16, A> {
    if params.a_cs == 1u {
        let off = r0 * SK + kk;
        let stride = SK;
        return coopLoadT<coop_mat16x16<f16, A>>(&sa[off], stride);
    }
    let off = kk * SA + r0;
    let stride = SA;
    return coopLoad<coop_mat16x16<f16, A>>(&sa[off], stride);
}

fn load_b(kk: u32, c0: u32) -> coop_mat16x16<f16, B> {
    if params.b_cs == 1u {
        let off = kk * SB + c0;
        let stride = SB;
        return coopLoadT<coop_mat16x16<f16, B>>(&sb[off], stride);
    }
    let off = c0 * SK + kk;
    let stride = SK;
    return coopLoad<coop_mat16x16<f16, B>>(&sb[off], stride);
}

// Writes one accumulator tile (rows row0.., cols col0.. of C) through the
// subgroup's f32 bounce tile and the epilogue; base_c / base_r: this batch
// item's C / res. Called in uniform control flow by every subgroup.
fn store_tile(acc: coop_mat16x16<f32, C>, sg: u32, sl: u32, row0: u32, col0: u32, base_c: u32, base_r: u32) {
    let off = sg * 256u;
    let stride = 16u;
    coopStoreT(acc, &sc[off], stride);
    workgroupBarrier();
    if params.act == ACT_GEGLU {
        // One invocation per (value, gate) pair: columns col0 + 2j, col0 + 2j + 1.
        for (var e = sl; e < 128u; e += SG) {
            let row = row0 + e / 8u;
            let col = col0 + 2u * (e % 8u);
            if row < params.m && col < params.n {
                let t = off + (e / 8u) * 16u + 2u * (e % 8u);
                var val = sc[t];
                var gate = sc[t + 1u];
                if params.has_bias != 0u {
                    val += f32(bias[params.off_bias + row * params.bias_rs + col * params.bias_cs]);
                    gate += f32(bias[params.off_bias + row * params.bias_rs + (col + 1u) * params.bias_cs]);
                }
                c[base_c + row * params.c_rs + col / 2u] = T(val * gelu_f32(gate));
            }
        }
    } else {
        for (var e = sl; e < 256u; e += SG) {
            let row = row0 + e / 16u;
            let col = col0 + e % 16u;
            if row < params.m && col < params.n {
                var v = sc[off + e];
                if params.has_bias != 0u {
                    v += f32(bias[params.off_bias + row * params.bias_rs + col * params.bias_cs]);
                }
                v = apply_activation(v, params.act);
                if params.has_res != 0u {
                    v += f32(res[base_r + row * params.c_rs + col]);
                }
                c[base_c + row * params.c_rs + col] = T(v);
            }
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(4u * SG)
fn matmul(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sgid: u32,
    @builtin(subgroup_invocation_id) sl: u32,
) {
    let tile = wid.y * nwg.x + wid.x;
    if tile >= params.tiles_total {
        return;
    }
    let wg = 4u * SG;
    let m0 = (tile / params.tiles_n) * BM;
    let n0 = (tile % params.tiles_n) * BN;
    let kdim = params.k;
    let base_a = params.off_a + wid.z * params.batch_a;
    let base_b = params.off_b + wid.z * params.batch_b;
    let base_c = params.off_c + wid.z * params.batch_c;
    let base_r = params.off_res + wid.z * params.batch_c;
    let sg = sgid % 4u;
    // This subgroup's 64x64 quadrant inside the block.
    let qm = (sg / 2u) * 64u;
    let qn = (sg % 2u) * 64u;

    for (var i = lid; i < 1024u; i += wg) {
        sc[i] = 0.0;
    }
    workgroupBarrier();
    let zoff = sg * 256u;
    let zstride = 16u;
    var c00 = coopLoadT<coop_mat16x16<f32, C>>(&sc[zoff], zstride);
    var c01 = c00;
    var c02 = c00;
    var c03 = c00;
    var c10 = c00;
    var c11 = c00;
    var c12 = c00;
    var c13 = c00;
    var c20 = c00;
    var c21 = c00;
    var c22 = c00;
    var c23 = c00;
    var c30 = c00;
    var c31 = c00;
    var c32 = c00;
    var c33 = c00;

    for (var k0 = 0u; k0 < kdim; k0 += BK) {
        // Stage A's [BM, BK] block, zero past the edges, in its global layout.
        for (var e = lid; e < BM * BK; e += wg) {
            var r: u32;
            var q: u32;
            var dst: u32;
            if params.a_cs == 1u {
                r = e / BK;
                q = e % BK;
                dst = r * SK + q;
            } else {
                r = e % BM;
                q = e / BM;
                dst = q * SA + r;
            }
            let gm = m0 + r;
            let gk = k0 + q;
            var v = 0.0h;
            if gm < params.m && gk < kdim {
                v = f16(a[base_a + gm * params.a_rs + gk * params.a_cs]);
            }
            sa[dst] = v;
        }
        // Stage B's [BK, BN] block the same way.
        for (var e = lid; e < BK * BN; e += wg) {
            var q: u32;
            var s: u32;
            var dst: u32;
            if params.b_cs == 1u {
                q = e / BN;
                s = e % BN;
                dst = q * SB + s;
            } else {
                s = e / BK;
                q = e % BK;
                dst = s * SK + q;
            }
            let gk = k0 + q;
            let gn = n0 + s;
            var v = 0.0h;
            if gk < kdim && gn < params.n {
                v = f16(b[base_b + gk * params.b_rs + gn * params.b_cs]);
            }
            sb[dst] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk += 16u) {
            let a0 = load_a(qm, kk);
            let a1 = load_a(qm + 16u, kk);
            let a2 = load_a(qm + 32u, kk);
            let a3 = load_a(qm + 48u, kk);
            let b0 = load_b(kk, qn);
            let b1 = load_b(kk, qn + 16u);
            let b2 = load_b(kk, qn + 32u);
            let b3 = load_b(kk, qn + 48u);
            c00 = coopMultiplyAdd(a0, b0, c00);
            c01 = coopMultiplyAdd(a0, b1, c01);
            c02 = coopMultiplyAdd(a0, b2, c02);
            c03 = coopMultiplyAdd(a0, b3, c03);
            c10 = coopMultiplyAdd(a1, b0, c10);
            c11 = coopMultiplyAdd(a1, b1, c11);
            c12 = coopMultiplyAdd(a1, b2, c12);
            c13 = coopMultiplyAdd(a1, b3, c13);
            c20 = coopMultiplyAdd(a2, b0, c20);
            c21 = coopMultiplyAdd(a2, b1, c21);
            c22 = coopMultiplyAdd(a2, b2, c22);
            c23 = coopMultiplyAdd(a2, b3, c23);
            c30 = coopMultiplyAdd(a3, b0, c30);
            c31 = coopMultiplyAdd(a3, b1, c31);
            c32 = coopMultiplyAdd(a3, b2, c32);
            c33 = coopMultiplyAdd(a3, b3, c33);
        }
        workgroupBarrier();
    }

    let r0 = m0 + qm;
    let col0 = n0 + qn;
    store_tile(c00, sg, sl, r0, col0, base_c, base_r);
    store_tile(c01, sg, sl, r0, col0 + 16u, base_c, base_r);
    store_tile(c02, sg, sl, r0, col0 + 32u, base_c, base_r);
    store_tile(c03, sg, sl, r0, col0 + 48u, base_c, base_r);
    store_tile(c10, sg, sl, r0 + 16u, col0, base_c, base_r);
    store_tile(c11, sg, sl, r0 + 16u, col0 + 16u, base_c, base_r);
    store_tile(c12, sg, sl, r0 + 16u, col0 + 32u, base_c, base_r);
    store_tile(c13, sg, sl, r0 + 16u, col0 + 48u, base_c, base_r);
    store_tile(c20, sg, sl, r0 + 32u, col0, base_c, base_r);
    store_tile(c21, sg, sl, r0 + 32u, col0 + 16u, base_c, base_r);
    store_tile(c22, sg, sl, r0 + 32u, col0 + 32u, base_c, base_r);
    store_tile(c23, sg, sl, r0 + 32u, col0 + 48u, base_c, base_r);
    store_tile(c30, sg, sl, r0 + 48u, col0, base_c, base_r);
    store_tile(c31, sg, sl, r0 + 48u, col0 + 16u, base_c, base_r);
    store_tile(c32, sg, sl, r0 + 48u, col0 + 32u, base_c, base_r);
    store_tile(c33, sg, sl, r0 + 48u, col0 + 48u, base_c, base_r);
}

// ---------------------------------------------------------------------------
// conv2d: Y[co, p] = sum over taps (ky, kx) and input channels ci of
// W[co, ci, ky, kx] * X[ci, iy, ix]. M = output channels, N = output pixels;
// each K-step is one tap and BK input channels, so staging needs no division.

@group(0) @binding(5) var<uniform> cparams: ConvParams;
@group(0) @binding(6) var<storage, read> cx: array<T>;
@group(0) @binding(7) var<storage, read> cw: array<T>;
@group(0) @binding(8) var<storage, read> cbias: array<T>;
@group(0) @binding(9) var<storage, read_write> cy: array<T>;
@group(0) @binding(11) var<storage, read> cres: array<T>;

// As `store_tile`, for output channel rows and pixel columns of NCHW y.
fn store_conv_tile(acc: coop_mat16x16<f32, C>, sg: u32, sl: u32, co0: u32, p0: u32, base_y: u32, base_b: u32, base_r: u32) {
    let off = sg * 256u;
    let stride = 16u;
    coopStoreT(acc, &sc[off], stride);
    workgroupBarrier();
    let npix = cparams.hout * cparams.wout;
    for (var e = sl; e < 256u; e += SG) {
        let co = co0 + e / 16u;
        let px = p0 + e % 16u;
        if co < cparams.cout && px < npix {
            let at = base_y + co * npix + px;
            var v = sc[off + e];
            if cparams.has_bias != 0u {
                v += f32(cbias[base_b + co]);
            }
            if cparams.accumulate != 0u {
                v += f32(cy[at]);
            }
            v = apply_activation(v, cparams.act);
            if cparams.has_res != 0u {
                v += f32(cres[base_r + co * npix + px]);
            }
            cy[at] = T(v);
        }
    }
    workgroupBarrier();
}

// The launcher runs this only when 4 * SG is a multiple of BN (SG 32 or 64),
// so each invocation stages the same output pixel in every pass.
@compute @workgroup_size(4u * SG)
fn conv2d(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sgid: u32,
    @builtin(subgroup_invocation_id) sl: u32,
) {
    let tile = wid.y * nwg.x + wid.x;
    if tile >= cparams.tiles_total {
        return;
    }
    let wg = 4u * SG;
    let m0 = (tile / cparams.tiles_n) * BM;
    let n0 = (tile % cparams.tiles_n) * BN;
    let npix = cparams.hout * cparams.wout;
    let khw = cparams.kh * cparams.kw;
    let cin = cparams.cin;
    let hw = cparams.h * cparams.w;
    let base_x = cparams.off_x + wid.z * cparams.batch_x;
    let base_y = cparams.off_y + wid.z * cparams.batch_y;
    let base_b = cparams.off_bias + wid.z * cparams.bias_bs;
    let base_r = cparams.off_res + wid.z * cparams.batch_y;
    let w_row = cparams.w_cin * khw;
    let base_w = cparams.off_w + cparams.ci_start * khw;
    let sg = sgid % 4u;
    let qm = (sg / 2u) * 64u;
    let qn = (sg % 2u) * 64u;

    // This invocation's staged output pixel.
    let s = lid % BN;
    let p = n0 + s;
    let wout = max(cparams.wout, 1u);
    let iy0 = i32(p / wout) * i32(cparams.stride_y) - i32(cparams.pad_y);
    let ix0 = i32(p % wout) * i32(cparams.stride_x) - i32(cparams.pad_x);

    for (var i = lid; i < 1024u; i += wg) {
        sc[i] = 0.0;
    }
    workgroupBarrier();
    let zoff = sg * 256u;
    let zstride = 16u;
    var c00 = coopLoadT<coop_mat16x16<f32, C>>(&sc[zoff], zstride);
    var c01 = c00;
    var c02 = c00;
    var c03 = c00;
    var c10 = c00;
    var c11 = c00;
    var c12 = c00;
    var c13 = c00;
    var c20 = c00;
    var c21 = c00;
    var c22 = c00;
    var c23 = c00;
    var c30 = c00;
    var c31 = c00;
    var c32 = c00;
    var c33 = c00;
    let sa_stride = SK;
    let sb_stride = SB;

    for (var tap = 0u; tap < khw; tap++) {
        let ky = tap / cparams.kw;
        let kx = tap % cparams.kw;
        let iy = iy0 + i32(ky * cparams.dil_y);
        let ix = ix0 + i32(kx * cparams.dil_x);
        let inside = p < npix && iy >= 0 && iy < i32(cparams.h) && ix >= 0 && ix < i32(cparams.w);
        let pix = u32(iy) * cparams.w + u32(ix);
        for (var c0 = 0u; c0 < cin; c0 += BK) {
            // W block [BM out channels][BK in channels], row-major.
            for (var e = lid; e < BM * BK; e += wg) {
                let r = e / BK;
                let q = e % BK;
                let co = m0 + r;
                let ci = c0 + q;
                var v = 0.0h;
                if co < cparams.cout && ci < cin {
                    v = f16(cw[base_w + co * w_row + ci * khw + tap]);
                }
                sa[r * SK + q] = v;
            }
            // X block [BK in channels][BN pixels], row-major.
            for (var q = lid / BN; q < BK; q += max(wg / BN, 1u)) {
                let ci = c0 + q;
                var v = 0.0h;
                if inside && ci < cin {
                    v = f16(cx[base_x + ci * hw + pix]);
                }
                sb[q * SB + s] = v;
            }
            workgroupBarrier();
            for (var kk = 0u; kk < BK; kk += 16u) {
                let a0 = coopLoadT<coop_mat16x16<f16, A>>(&sa[qm * SK + kk], sa_stride);
                let a1 = coopLoadT<coop_mat16x16<f16, A>>(&sa[(qm + 16u) * SK + kk], sa_stride);
                let a2 = coopLoadT<coop_mat16x16<f16, A>>(&sa[(qm + 32u) * SK + kk], sa_stride);
                let a3 = coopLoadT<coop_mat16x16<f16, A>>(&sa[(qm + 48u) * SK + kk], sa_stride);
                let b0 = coopLoadT<coop_mat16x16<f16, B>>(&sb[kk * SB + qn], sb_stride);
                let b1 = coopLoadT<coop_mat16x16<f16, B>>(&sb[kk * SB + qn + 16u], sb_stride);
                let b2 = coopLoadT<coop_mat16x16<f16, B>>(&sb[kk * SB + qn + 32u], sb_stride);
                let b3 = coopLoadT<coop_mat16x16<f16, B>>(&sb[kk * SB + qn + 48u], sb_stride);
                c00 = coopMultiplyAdd(a0, b0, c00);
                c01 = coopMultiplyAdd(a0, b1, c01);
                c02 = coopMultiplyAdd(a0, b2, c02);
                c03 = coopMultiplyAdd(a0, b3, c03);
                c10 = coopMultiplyAdd(a1, b0, c10);
                c11 = coopMultiplyAdd(a1, b1, c11);
                c12 = coopMultiplyAdd(a1, b2, c12);
                c13 = coopMultiplyAdd(a1, b3, c13);
                c20 = coopMultiplyAdd(a2, b0, c20);
                c21 = coopMultiplyAdd(a2, b1, c21);
                c22 = coopMultiplyAdd(a2, b2, c22);
                c23 = coopMultiplyAdd(a2, b3, c23);
                c30 = coopMultiplyAdd(a3, b0, c30);
                c31 = coopMultiplyAdd(a3, b1, c31);
                c32 = coopMultiplyAdd(a3, b2, c32);
                c33 = coopMultiplyAdd(a3, b3, c33);
            }
            workgroupBarrier();
        }
    }

    let r0 = m0 + qm;
    let p0 = n0 + qn;
    store_conv_tile(c00, sg, sl, r0, p0, base_y, base_b, base_r);
    store_conv_tile(c01, sg, sl, r0, p0 + 16u, base_y, base_b, base_r);
    store_conv_tile(c02, sg, sl, r0, p0 + 32u, base_y, base_b, base_r);
    store_conv_tile(c03, sg, sl, r0, p0 + 48u, base_y, base_b, base_r);
    store_conv_tile(c10, sg, sl, r0 + 16u, p0, base_y, base_b, base_r);
    store_conv_tile(c11, sg, sl, r0 + 16u, p0 + 16u, base_y, base_b, base_r);
    store_conv_tile(c12, sg, sl, r0 + 16u, p0 + 32u, base_y, base_b, base_r);
    store_conv_tile(c13, sg, sl, r0 + 16u, p0 + 48u, base_y, base_b, base_r);
    store_conv_tile(c20, sg, sl, r0 + 32u, p0, base_y, base_b, base_r);
    store_conv_tile(c21, sg, sl, r0 + 32u, p0 + 16u, base_y, base_b, base_r);
    store_conv_tile(c22, sg, sl, r0 + 32u, p0 + 32u, base_y, base_b, base_r);
    store_conv_tile(c23, sg, sl, r0 + 32u, p0 + 48u, base_y, base_b, base_r);
    store_conv_tile(c30, sg, sl, r0 + 48u, p0, base_y, base_b, base_r);
    store_conv_tile(c31, sg, sl, r0 + 48u, p0 + 16u, base_y, base_b, base_r);
    store_conv_tile(c32, sg, sl, r0 + 48u, p0 + 32u, base_y, base_b, base_r);
    store_conv_tile(c33, sg, sl, r0 + 48u, p0 + 48u, base_y, base_b, base_r);
}
