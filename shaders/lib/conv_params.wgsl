// The parameter block of the convolution kernels (conv2d.wgsl, matmul_coop.wgsl's
// `conv2d`); the Rust side is `Conv2dParams` in engine/gpu/src/ops/conv2d.rs.

struct ConvParams {
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
    // Element step of the bias between batch items (0: one bias for all).
    bias_bs: u32,
    // 1: add res (laid out as y) after the activation.
    has_res: u32,
    off_res: u32,
}
