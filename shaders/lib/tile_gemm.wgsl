// The portable tiled GEMM that matmul.wgsl and conv2d.wgsl share: block
// sizes, the k-major staging of an A block (sa) and a B block (sb) in
// workgroup memory, and the 8x8 micro-kernel by which each invocation
// accumulates its part of the output block. Each shader stages the blocks
// its own way (a matrix, or an implicit im2col of a convolution's input)
// and writes the result through its own epilogue.

// Block size (multiples of 8) and K-step; WG must be (BM / 8) * (BN / 8).
override BM: u32 = 128u;
override BN: u32 = 128u;
override BK: u32 = 16u;
override WG: u32 = 256u;

// k-major staging, one vec4 per 4 rows (columns), rows padded by one vec4
// to spread the k-fast staging writes over memory banks.
var<workgroup> sa: array<vec4<f32>, BK * (BM / 4u + 1u)>;
var<workgroup> sb: array<vec4<f32>, BK * (BN / 4u + 1u)>;

// What a GEMM entry point is told: its workgroup in a grid of output
// blocks rounded up to 2-D (nwg.x blocks a row, batch items along z) and
// the invocation's index in it.
struct BlockIds {
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
}

// The first row and column of this workgroup's output block and 1, or
// zeros for a workgroup past the last block. Reads the including shader's
// params.tiles_total and params.tiles_n.
fn block_origin(ids: BlockIds) -> vec3<u32> {
    let tile = ids.wid.y * ids.nwg.x + ids.wid.x;
    if tile >= params.tiles_total {
        return vec3<u32>(0u);
    }
    return vec3<u32>((tile / params.tiles_n) * BM, (tile % params.tiles_n) * BN, 1u);
}

// An invocation's 8x8 block of the output: row i is (c<i>0, c<i>1), the
// columns col0..col0+3 and col1..col1+3; rows 0..3 are r0.., 4..7 are r1..
// (see block_row).
struct Acc8x8 {
    c00: vec4<f32>,
    c01: vec4<f32>,
    c10: vec4<f32>,
    c11: vec4<f32>,
    c20: vec4<f32>,
    c21: vec4<f32>,
    c30: vec4<f32>,
    c31: vec4<f32>,
    c40: vec4<f32>,
    c41: vec4<f32>,
    c50: vec4<f32>,
    c51: vec4<f32>,
    c60: vec4<f32>,
    c61: vec4<f32>,
    c70: vec4<f32>,
    c71: vec4<f32>,
}

// acc += the product of the staged blocks for the invocation at (ty, tx)
// of the (BM / 8) x (BN / 8) grid: rows ty and ty + BM / 8 of vec4s in sa,
// columns tx and tx + BN / 8 in sb. Unrolled into 16 vec4 FMAs per k.
fn accumulate_block(acc: ptr<function, Acc8x8>, ty: u32, tx: u32) {
    let qa = BM / 4u;
    let qb = BN / 4u;
    let sra = qa + 1u;
    let srb = qb + 1u;
    for (var kk = 0u; kk < BK; kk++) {
        let a0 = sa[kk * sra + ty];
        let a1 = sa[kk * sra + ty + qa / 2u];
        let b0 = sb[kk * srb + tx];
        let b1 = sb[kk * srb + tx + qb / 2u];
        (*acc).c00 = fma(vec4<f32>(a0.x), b0, (*acc).c00);
        (*acc).c01 = fma(vec4<f32>(a0.x), b1, (*acc).c01);
        (*acc).c10 = fma(vec4<f32>(a0.y), b0, (*acc).c10);
        (*acc).c11 = fma(vec4<f32>(a0.y), b1, (*acc).c11);
        (*acc).c20 = fma(vec4<f32>(a0.z), b0, (*acc).c20);
        (*acc).c21 = fma(vec4<f32>(a0.z), b1, (*acc).c21);
        (*acc).c30 = fma(vec4<f32>(a0.w), b0, (*acc).c30);
        (*acc).c31 = fma(vec4<f32>(a0.w), b1, (*acc).c31);
        (*acc).c40 = fma(vec4<f32>(a1.x), b0, (*acc).c40);
        (*acc).c41 = fma(vec4<f32>(a1.x), b1, (*acc).c41);
        (*acc).c50 = fma(vec4<f32>(a1.y), b0, (*acc).c50);
        (*acc).c51 = fma(vec4<f32>(a1.y), b1, (*acc).c51);
        (*acc).c60 = fma(vec4<f32>(a1.z), b0, (*acc).c60);
        (*acc).c61 = fma(vec4<f32>(a1.z), b1, (*acc).c61);
        (*acc).c70 = fma(vec4<f32>(a1.w), b0, (*acc).c70);
        (*acc).c71 = fma(vec4<f32>(a1.w), b1, (*acc).c71);
    }
}

// Row i (0..8) of the block: its two vec4s.
fn acc_row(acc: Acc8x8, i: u32) -> array<vec4<f32>, 2> {
    switch i {
        case 0u: { return array<vec4<f32>, 2>(acc.c00, acc.c01); }
        case 1u: { return array<vec4<f32>, 2>(acc.c10, acc.c11); }
        case 2u: { return array<vec4<f32>, 2>(acc.c20, acc.c21); }
        case 3u: { return array<vec4<f32>, 2>(acc.c30, acc.c31); }
        case 4u: { return array<vec4<f32>, 2>(acc.c40, acc.c41); }
        case 5u: { return array<vec4<f32>, 2>(acc.c50, acc.c51); }
        case 6u: { return array<vec4<f32>, 2>(acc.c60, acc.c61); }
        default: { return array<vec4<f32>, 2>(acc.c70, acc.c71); }
    }
}

// Writes the block through the shader's epilogue, `store_at(bases, row, col, v)`
// (four consecutive columns of one row; `bases` are the shader's own offsets):
// rows r0..r0+3 and r1..r1+3, columns col0.. and col1...
fn store_block(acc: Acc8x8, r0: u32, r1: u32, col0: u32, col1: u32, bases: vec4<u32>) {
    for (var i = 0u; i < 8u; i++) {
        let row = select(r0 + i, r1 + i - 4u, i >= 4u);
        let v = acc_row(acc, i);
        store_at(bases, row, col0, v[0]);
        store_at(bases, row, col1, v[1]);
    }
}
