// 2-D convolution as PyTorch's `F.conv2d` (groups = 1): NCHW input, weight
// [Cout, Cin, kh, kw], optional bias [Cout] or per batch item [B, Cout] (a
// ResNet block's conv plus its time embedding), any stride, padding and
// dilation, then an optional activation, then an optional residual of y's
// shape (`skip + conv(h)`). f32 arithmetic, storage T. Bindings: 0 params,
// 1 x, 2 w, 3 bias, 4 y, 5 res.
//
// Implicit GEMM, no im2col buffer: per batch item, Y[co, p] = sum_k W[co, k] *
// X[k, p] with p = oy * Wout + ox and the reduction k walking (ky, kx) in the
// outer loop and input channels in BK-steps inside it, so staging a step needs
// no division: the kernel tap is fixed per step and each invocation's output
// pixel is fixed for the whole run. Same tiling as matmul.wgsl: a workgroup
// computes a BM (channels) x BN (pixels) block, an invocation an 8x8
// micro-tile; zero-padded staging handles every edge and the padding ring.
// The output block is written along pixels, i.e. contiguously in NCHW.

// ConvParams: shaders/lib/conv_params.wgsl.
@group(0) @binding(0) var<uniform> params: ConvParams;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read> w: array<T>;
@group(0) @binding(3) var<storage, read> bias: array<T>;
@group(0) @binding(4) var<storage, read_write> y: array<T>;
@group(0) @binding(5) var<storage, read> res: array<T>;

// BM, BN, BK, WG, the staging arrays sa, sb and the micro-kernel: shaders/lib/tile_gemm.wgsl.
// Here WG must also be a multiple of BN / 4 (see the B staging below).

// Writes four consecutive pixels of one output channel through the
// epilogue; base_y / base_b / base_r: this batch item's y / bias / res.
fn store4(base_y: u32, base_b: u32, base_r: u32, co: u32, px: u32, npix: u32, v: vec4<f32>) {
    if co >= params.cout {
        return;
    }
    var add = 0.0;
    if params.has_bias != 0u {
        add = f32(bias[base_b + co]);
    }
    for (var j = 0u; j < 4u; j++) {
        let p = px + j;
        if p < npix {
            let at = base_y + co * npix + p;
            var x = v[j] + add;
            if params.accumulate != 0u {
                x += f32(y[at]);
            }
            x = apply_activation(x, params.act);
            if params.has_res != 0u {
                x += f32(res[base_r + co * npix + p]);
            }
            y[at] = T(x);
        }
    }
}

// The micro-kernel's epilogue hook (shaders/lib/tile_gemm.wgsl): bases = (base_y, base_b, base_r, npix).
fn store_at(bases: vec4<u32>, co: u32, px: u32, v: vec4<f32>) {
    store4(bases.x, bases.y, bases.z, co, px, bases.w, v);
}

@compute @workgroup_size(WG)
fn conv2d(ids: BlockIds) {
    let lid = ids.lid;
    let npix = params.hout * params.wout;
    let khw = params.kh * params.kw;
    let origin = block_origin(ids);
    if origin.z == 0u {
        return;
    }
    let m0 = origin.x;
    let n0 = origin.y;
    let base_x = params.off_x + ids.wid.z * params.batch_x;
    let base_y = params.off_y + ids.wid.z * params.batch_y;
    let base_b = params.off_bias + ids.wid.z * params.bias_bs;
    let base_r = params.off_res + ids.wid.z * params.batch_y;
    let hw = params.h * params.w;
    // Weight row stride and the first weight element of this channel split.
    let w_row = params.w_cin * khw;
    let base_w = params.off_w + params.ci_start * khw;
    let qa = BM / 4u;
    let qb = BN / 4u;
    let sra = qa + 1u;
    let srb = qb + 1u;

    // The 4 output pixels this invocation stages for B: WG is a multiple of
    // BN / 4, so they are the same in every staging pass and every step.
    let s4 = lid % qb;
    let q0 = lid / qb;
    let qstep = WG / qb;
    let p = vec4<u32>(n0 + 4u * s4) + vec4<u32>(0u, 1u, 2u, 3u);
    let wout = max(params.wout, 1u);
    let p_ok = p < vec4<u32>(npix);
    let iy0 = vec4<i32>(p / wout) * i32(params.stride_y) - i32(params.pad_y);
    let ix0 = vec4<i32>(p % wout) * i32(params.stride_x) - i32(params.pad_x);

    let tx = lid % (BN / 8u);
    let ty = lid / (BN / 8u);

    var acc = Acc8x8();

    for (var tap = 0u; tap < khw; tap++) {
        let ky = tap / params.kw;
        let kx = tap % params.kw;
        let iy = iy0 + vec4<i32>(i32(ky * params.dil_y));
        let ix = ix0 + vec4<i32>(i32(kx * params.dil_x));
        let inside = p_ok & (iy >= vec4<i32>(0)) & (iy < vec4<i32>(i32(params.h))) & (ix >= vec4<i32>(0))
            & (ix < vec4<i32>(i32(params.w)));
        let pix = vec4<u32>(iy) * params.w + vec4<u32>(ix);
        for (var c0 = 0u; c0 < params.cin; c0 += BK) {
            // W block: (BM / 4) x BK vec4s, 4 output channels at one input channel.
            for (var e = lid; e < qa * BK; e += WG) {
                let r4 = e / BK;
                let q = e % BK;
                let co = m0 + 4u * r4;
                let ci = c0 + q;
                var v = vec4<f32>(0.0);
                if ci < params.cin {
                    let at = base_w + co * w_row + ci * khw + tap;
                    for (var i = 0u; i < 4u; i++) {
                        if co + i < params.cout {
                            v[i] = f32(w[at + i * w_row]);
                        }
                    }
                }
                sa[q * sra + r4] = v;
            }
            // X block: BK x (BN / 4) vec4s, 4 pixels at one input channel.
            for (var q = q0; q < BK; q += qstep) {
                let ci = c0 + q;
                var v = vec4<f32>(0.0);
                if ci < params.cin {
                    let at = base_x + ci * hw;
                    for (var i = 0u; i < 4u; i++) {
                        if inside[i] {
                            v[i] = f32(x[at + pix[i]]);
                        }
                    }
                }
                sb[q * srb + s4] = v;
            }
            workgroupBarrier();
            accumulate_block(&acc, ty, tx);
            workgroupBarrier();
        }
    }

    let r0 = m0 + 4u * ty;
    let r1 = r0 + BM / 2u;
    let p0 = n0 + 4u * tx;
    let p1 = p0 + BN / 2u;
    store_block(acc, r0, r1, p0, p1, vec4<u32>(base_y, base_b, base_r, npix));
}
