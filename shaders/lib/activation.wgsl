// Activation functions shared by the kernels that apply or fuse them
// (elementwise, binary, matmul, conv2d, matmul_coop), prepended to their
// bodies by the registry (`ShaderSource::libs`), so there is one copy.

// erf in f32: a Maclaurin series for |v| < 0.5 (exact to f32), Numerical
// Recipes' Chebyshev erfc beyond (relative error < 1.2e-7).
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

// GELU with the exact erf form (PyTorch's default, used by SD's GEGLU).
fn gelu_f32(v: f32) -> f32 {
    return 0.5 * v * (1.0 + erf_f32(v * 0.7071067811865476));
}

// An epilogue activation by code, as `ops::matmul::Activation::code`:
// 0 none, 1 SiLU, 2 GELU (erf), 3 quick-GELU (CLIP's x * sigmoid(1.702 x)).
fn apply_activation(v: f32, act: u32) -> f32 {
    switch act {
        case 1u: { return v / (1.0 + exp(-v)); }
        case 2u: { return gelu_f32(v); }
        case 3u: { return v / (1.0 + exp(-1.702 * v)); }
        default: { return v; }
    }
}
