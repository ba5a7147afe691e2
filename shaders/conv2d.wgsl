// 2-D convolution as PyTorch's `F.conv2d` (groups = 1): NCHW input, weight
// [Cout, Cin, kh, kw], optional bias [Cout], any stride, padding and dilation,
// then an optional activation. f32 arithmetic, storage T. Bindings: 0 params,
// 1 x, 2 w, 3 bias, 4 y.
//
// Implicit GEMM, no im2col buffer: per batch item, Y[co, p] = sum_k W[co, k] *
// X[k, p] with p = oy * Wout + ox and the reduction k walking (ky, kx) in the
// outer loop and input channels in BK-steps inside it, so staging a step needs
// no division: the kernel tap is fixed per step and each invocation's output
// pixel is fixed for the whole run. Same tiling as matmul.wgsl: a workgroup
// computes a BM (channels) x BN (pixels) block, an invocation a TM x TN
// micro-tile; zero-padded staging handles every edge and the padding ring.
// The output block is written along pixels, i.e. contiguously in NCHW.

struct Params {
    cin: u32,
    h: u32,
    w: u32,
    cout: u32,
    hout: u32,
    wout: u32,
    kh: u32,
    kw: u32,
    stride_y: u32,
    stride_x: u32,
    pad_y: u32,
    pad_x: u32,
    dil_y: u32,
    dil_x: u32,
    // The weight's full input-channel count and the first channel of this
    // dispatch (input channels may be split over dispatches).
    w_cin: u32,
    ci_start: u32,
    // Element steps between batch items of x and y.
    batch_x: u32,
    batch_y: u32,
    // Offsets (elements) of this dispatch's data inside the bound windows.
    off_x: u32,
    off_w: u32,
    off_bias: u32,
    off_y: u32,
    has_bias: u32,
    // 0 none, 1 SiLU, 2 GELU (erf), 3 quick-GELU.
    act: u32,
    // 1: add to what y holds (a later split of the input channels).
    accumulate: u32,
    tiles_n: u32,
    tiles_total: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
@group(0) @binding(2) var<storage, read> w: array<T>;
@group(0) @binding(3) var<storage, read> bias: array<T>;
@group(0) @binding(4) var<storage, read_write> y: array<T>;

override BM: u32 = 64u;
override BN: u32 = 64u;
override BK: u32 = 16u;
// Must equal (BM / TM) * (BN / TN) and be a multiple of BN.
override WG: u32 = 256u;
const TM: u32 = 4u;
const TN: u32 = 4u;

var<workgroup> sa: array<f32, BK * (BM + 1u)>;
var<workgroup> sb: array<f32, BK * BN>;

fn erf_f32(v: f32) -> f32 {
    let a = abs(v);
    if a < 0.5 {
        let z = v * v;
        return v * 1.1283791670955126 * (1.0 + z * (-0.3333333333333333 + z * (0.1 + z * (-0.023809523809523808 + z * (0.004629629629629629 + z * (-0.0007575757575757576))))));
    }
    let t = 1.0 / (1.0 + 0.5 * a);
    let r = t * exp(-a * a - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
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
fn conv2d(
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
    let npix = params.hout * params.wout;
    let khw = params.kh * params.kw;
    let base_x = params.off_x + wid.z * params.batch_x;
    let base_y = params.off_y + wid.z * params.batch_y;
    let hw = params.h * params.w;
    // Weight row stride and the first weight element of this channel split.
    let w_row = params.w_cin * khw;
    let base_w = params.off_w + params.ci_start * khw;

    // The output pixel this invocation stages for B (WG is a multiple of BN,
    // so it is the same in every staging pass).
    let sp = lid % BN;
    let q0 = lid / BN;
    let qstep = WG / BN;
    let p = n0 + sp;
    let p_ok = p < npix;
    let oy = i32(p / max(params.wout, 1u));
    let ox = i32(p % max(params.wout, 1u));
    let iy0 = oy * i32(params.stride_y) - i32(params.pad_y);
    let ix0 = ox * i32(params.stride_x) - i32(params.pad_x);

    let cols = BN / TN;
    let tx = lid % cols;
    let ty = lid / cols;
    let rs = BM / TM;
    let cs = BN / TN;
    let sam = BM + 1u;

    var acc: array<vec4<f32>, TM>;
    for (var i = 0u; i < TM; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    for (var tap = 0u; tap < khw; tap++) {
        let ky = tap / params.kw;
        let kx = tap % params.kw;
        let iy = iy0 + i32(ky * params.dil_y);
        let ix = ix0 + i32(kx * params.dil_x);
        let pix_ok = p_ok && iy >= 0 && iy < i32(params.h) && ix >= 0 && ix < i32(params.w);
        let pix = u32(iy) * params.w + u32(ix);
        for (var c0 = 0u; c0 < params.cin; c0 += BK) {
            // W block [BM channels out, BK channels in] at this tap, k fastest.
            for (var e = lid; e < BM * BK; e += WG) {
                let r = e / BK;
                let q = e % BK;
                let co = m0 + r;
                let ci = c0 + q;
                var v = 0.0;
                if co < params.cout && ci < params.cin {
                    v = f32(w[base_w + co * w_row + ci * khw + tap]);
                }
                sa[q * sam + r] = v;
            }
            // X block [BK channels in, BN pixels], pixels fastest.
            for (var q = q0; q < BK; q += qstep) {
                let ci = c0 + q;
                var v = 0.0;
                if pix_ok && ci < params.cin {
                    v = f32(x[base_x + ci * hw + pix]);
                }
                sb[q * BN + sp] = v;
            }
            workgroupBarrier();
            for (var kk = 0u; kk < BK; kk++) {
                let ra = kk * sam + ty;
                let rb = kk * BN + tx;
                let bv = vec4<f32>(sb[rb], sb[rb + cs], sb[rb + 2u * cs], sb[rb + 3u * cs]);
                for (var i = 0u; i < TM; i++) {
                    acc[i] = fma(vec4<f32>(sa[ra + i * rs]), bv, acc[i]);
                }
            }
            workgroupBarrier();
        }
    }

    for (var i = 0u; i < TM; i++) {
        let co = m0 + ty + i * rs;
        if co >= params.cout {
            continue;
        }
        var add = 0.0;
        if params.has_bias != 0u {
            add = f32(bias[params.off_bias + co]);
        }
        for (var j = 0u; j < TN; j++) {
            let px = n0 + tx + j * cs;
            if px < npix {
                let at = base_y + co * npix + px;
                var v = acc[i][j] + add;
                if params.accumulate != 0u {
                    v += f32(y[at]);
                }
                y[at] = T(activate(v));
            }
        }
    }
}
