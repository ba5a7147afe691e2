// The parameter block of the matmul kernels (matmul.wgsl, matmul_coop.wgsl's
// `matmul`); the Rust side is `MatmulParams` in engine/gpu/src/ops/matmul.rs.

struct MatmulParams {
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
    // bias[off_bias + row * bias_rs + col * bias_cs].
    bias_rs: u32,
    bias_cs: u32,
    // 1: add res (laid out as C) after the activation.
    has_res: u32,
    off_res: u32,
    // Elements between rows of C (N, or N / 2 with GEGLU).
    c_rs: u32,
}
