// Softmax over the last axis (torch.softmax(x, dim=-1)), max-subtracted so
// large inputs do not overflow exp. One workgroup per row: each invocation
// keeps an online (max, sum of exp(x - max)) over its strided elements, the
// workgroup merges them in a tree, then every invocation writes its elements.
// Bindings: 0 params, 1 x (read), 2 y (write).

struct Params {
    rows: u32,
    // Row length.
    n: u32,
}

// Bindings, WG and index: shaders/lib/unary_io.wgsl.
// Below any finite input, so exp(m - v) of the start value underflows to 0
// instead of giving inf - inf.
const START: f32 = -3.0e38;

var<workgroup> sh_m: array<f32, WG>;
var<workgroup> sh_s: array<f32, WG>;

@compute @workgroup_size(WG)
fn softmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if row >= params.rows {
        return;
    }
    let n = params.n;
    let base = row * n;
    var m = START;
    var s = 0.0;
    for (var i = lid; i < n; i += WG) {
        let v = f32(x[base + i]);
        if v > m {
            s = s * exp(m - v) + 1.0;
            m = v;
        } else {
            s += exp(v - m);
        }
    }
    sh_m[lid] = m;
    sh_s[lid] = s;
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off = off / 2u) {
        if lid < off {
            let ma = sh_m[lid];
            let mb = sh_m[lid + off];
            let mm = max(ma, mb);
            sh_s[lid] = sh_s[lid] * exp(ma - mm) + sh_s[lid + off] * exp(mb - mm);
            sh_m[lid] = mm;
        }
        workgroupBarrier();
    }
    let mx = sh_m[0];
    let inv = 1.0 / sh_s[0];
    for (var i = lid; i < n; i += WG) {
        y[base + i] = T(exp(f32(x[base + i]) - mx) * inv);
    }
}
