// Parameters and bindings shared by attention.wgsl and attention_coop.wgsl
// (the same operation on two kinds of hardware): bindings 0 params, 1 q,
// 2 k, 3 v (read), 4 out (write).

struct Params {
    lq: u32,
    lk: u32,
    heads: u32,
    // 1: query i attends to keys 0..=i only (CLIP's mask).
    causal: u32,
    // The softmax scale times log2(e): the kernel exponentiates with exp2.
    scale_log2: f32,
    // Elements between rows (positions) of q, k, v, and their first element.
    q_rs: u32,
    k_rs: u32,
    v_rs: u32,
    q_off: u32,
    k_off: u32,
    v_off: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<T>;
@group(0) @binding(2) var<storage, read> k: array<T>;
@group(0) @binding(3) var<storage, read> v: array<T>;
@group(0) @binding(4) var<storage, read_write> out: array<T>;

// Where head h of batch item b starts (row 0, channel 0) in q, k, v and out;
// out is [B, Lq, heads * HEAD_DIM], contiguous. HEAD_DIM: the including shader's.
struct HeadBases {
    q: u32,
    k: u32,
    v: u32,
    o: u32,
}

fn head_bases(b: u32, h: u32) -> HeadBases {
    let hd = h * HEAD_DIM;
    return HeadBases(
        params.q_off + b * params.lq * params.q_rs + hd,
        params.k_off + b * params.lk * params.k_rs + hd,
        params.v_off + b * params.lk * params.v_rs + hd,
        b * params.lq * params.heads * HEAD_DIM + hd,
    );
}
