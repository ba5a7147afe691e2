// Normalisation: GroupNorm (PyTorch nn.GroupNorm, optionally followed by SiLU
// as in diffusers' ResnetBlock2D) and LayerNorm over the last axis
// (nn.LayerNorm). Biased variance, statistics in f32.
//
// GroupNorm spreads a large group (a million elements in the VAE at
// 512x512) over many workgroups, in up to three passes:
//   gn_stats:    grid (chunks, B*G). Each workgroup folds one chunk of one
//                group into (count, mean, M2) and writes it to `partial`.
//   gn_finalize: one workgroup per (batch, group) merges its chunks' partials
//                into `stats` = (shift, mean - shift, 1/sqrt(var + eps)).
//   gn_apply:    one element per invocation: normalise, affine, optional SiLU.
//                With `merge` set (few chunks per group: the UNet's sizes)
//                each invocation merges its group's partials itself and
//                gn_finalize is skipped.
// A group of at most one chunk takes one pass, gn_single: one workgroup per
// (batch, group) folds it and applies. layer_norm likewise, per row.
//
// Stability: each invocation runs Welford's update over its strided elements,
// and the workgroup merges those with Chan's pairwise formula in a tree, so no
// long f32 sum ever forms. Values are also taken relative to a shift (the
// first element of the group or row): for data like 100 +- 1 the shifted
// values are small and exact, so the mean and x - mean lose no bits to the
// offset.
//
// Bindings: 0 params; gn_stats 1 x, 2 partial; gn_finalize 1 x, 2 partial,
// 3 stats; gn_apply 1 x, 3 stats, 4 gamma, 5 beta, 6 y; layer_norm 1 x,
// 4 gamma, 5 beta, 6 y. `partial` and `stats` are f32 scratch in every variant.

struct Params {
    // gn_apply: elements in x; gn_finalize: B * G; layer_norm: rows.
    n: u32,
    // Elements per (batch, group); layer_norm: C.
    group_len: u32,
    // Elements one gn_stats workgroup folds.
    chunk_len: u32,
    // Chunks per group.
    nchunks: u32,
    // Product of the spatial dims.
    spatial: u32,
    channels: u32,
    channels_per_group: u32,
    // gn_apply: 1 to apply SiLU after the affine.
    silu: u32,
    eps: f32,
    // gn_apply: 1 to merge the partials itself (no gn_finalize).
    merge: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> x: array<T>;
// (count, mean, M2, unused) of the shifted values, per (group, chunk).
@group(0) @binding(2) var<storage, read_write> partial: array<f32>;
// (shift, mean - shift, rstd, unused) per (batch, group).
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
@group(0) @binding(4) var<storage, read> gamma: array<T>;
@group(0) @binding(5) var<storage, read> beta: array<T>;
@group(0) @binding(6) var<storage, read_write> y: array<T>;

// Workgroup size, a power of two: 256 for the multi-pass GroupNorm; the
// single-workgroup kernels take fewer for short rows and groups (the
// launcher's choice), so few invocations wait at each reduction barrier.
override WG: u32 = 256u;

var<workgroup> sh_n: array<f32, WG>;
var<workgroup> sh_mean: array<f32, WG>;
var<workgroup> sh_m2: array<f32, WG>;

// Running statistics of a set of values: count, mean, sum of squared deviations.
struct Stat {
    n: f32,
    mean: f32,
    m2: f32,
}

fn welford(s: Stat, v: f32) -> Stat {
    let n = s.n + 1.0;
    let d = v - s.mean;
    let mean = s.mean + d / n;
    return Stat(n, mean, s.m2 + d * (v - mean));
}

// Chan et al.'s combination of two sets' statistics.
fn merge(a: Stat, b: Stat) -> Stat {
    if b.n == 0.0 {
        return a;
    }
    if a.n == 0.0 {
        return b;
    }
    let n = a.n + b.n;
    let d = b.mean - a.mean;
    let fb = b.n / n;
    return Stat(n, a.mean + d * fb, a.m2 + b.m2 + d * d * a.n * fb);
}

// Tree-merges every invocation's `s`; all invocations get the total. Must be
// called in uniform control flow. Ends with a barrier, so it may be called again.
fn reduce(lid: u32, s: Stat) -> Stat {
    sh_n[lid] = s.n;
    sh_mean[lid] = s.mean;
    sh_m2[lid] = s.m2;
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off = off / 2u) {
        if lid < off {
            let m = merge(Stat(sh_n[lid], sh_mean[lid], sh_m2[lid]), Stat(sh_n[lid + off], sh_mean[lid + off], sh_m2[lid + off]));
            sh_n[lid] = m.n;
            sh_mean[lid] = m.mean;
            sh_m2[lid] = m.m2;
        }
        workgroupBarrier();
    }
    let total = Stat(sh_n[0], sh_mean[0], sh_m2[0]);
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(WG)
fn gn_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let chunk = wid.x;
    let bg = wid.y;
    let base = bg * params.group_len;
    let shift = f32(x[base]);
    let start = chunk * params.chunk_len;
    let end = min(start + params.chunk_len, params.group_len);
    var s = Stat(0.0, 0.0, 0.0);
    for (var i = start + lid; i < end; i += WG) {
        s = welford(s, f32(x[base + i]) - shift);
    }
    let total = reduce(lid, s);
    if lid == 0u {
        let o = (bg * params.nchunks + chunk) * 4u;
        partial[o] = total.n;
        partial[o + 1u] = total.mean;
        partial[o + 2u] = total.m2;
        partial[o + 3u] = 0.0;
    }
}

@compute @workgroup_size(WG)
fn gn_finalize(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bg = wid.y * nwg.x + wid.x;
    if bg >= params.n {
        return;
    }
    var s = Stat(0.0, 0.0, 0.0);
    for (var c = lid; c < params.nchunks; c += WG) {
        let o = (bg * params.nchunks + c) * 4u;
        s = merge(s, Stat(partial[o], partial[o + 1u], partial[o + 2u]));
    }
    let total = reduce(lid, s);
    if lid == 0u {
        let o = bg * 4u;
        stats[o] = f32(x[bg * params.group_len]);
        stats[o + 1u] = total.mean;
        stats[o + 2u] = inverseSqrt(max(total.m2 / total.n, 0.0) + params.eps);
        stats[o + 3u] = 0.0;
    }
}

@compute @workgroup_size(WG)
fn gn_apply(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wid.y * nwg.x + wid.x) * WG + lid;
    if i >= params.n {
        return;
    }
    // [B, C, S]: b * C + c, and (b * C + c) / (C / G) = b * G + g.
    let bc = i / params.spatial;
    let c = bc % params.channels;
    let bg = bc / params.channels_per_group;
    var v: f32;
    if params.merge != 0u {
        var s = Stat(0.0, 0.0, 0.0);
        for (var k = 0u; k < params.nchunks; k++) {
            let o = (bg * params.nchunks + k) * 4u;
            s = merge(s, Stat(partial[o], partial[o + 1u], partial[o + 2u]));
        }
        let rstd = inverseSqrt(max(s.m2 / s.n, 0.0) + params.eps);
        let shift = f32(x[bg * params.group_len]);
        v = ((f32(x[i]) - shift) - s.mean) * rstd;
    } else {
        let o = bg * 4u;
        v = ((f32(x[i]) - stats[o]) - stats[o + 1u]) * stats[o + 2u];
    }
    v = v * f32(gamma[c]) + f32(beta[c]);
    if params.silu != 0u {
        y[i] = T(v / (1.0 + exp(-v)));
    } else {
        y[i] = T(v);
    }
}

// Normalises x[base .. base + len), the whole workgroup together: Welford
// statistics relative to the first element, then the affine of channel
// c0 + i / div for element i (div 1: LayerNorm's per-element affine), then
// SiLU when `silu`. Must be called in uniform control flow.
fn normalise_range(lid: u32, base: u32, len: u32, c0: u32, div: u32, silu: bool) {
    let shift = f32(x[base]);
    var s = Stat(0.0, 0.0, 0.0);
    for (var i = lid; i < len; i += WG) {
        s = welford(s, f32(x[base + i]) - shift);
    }
    let total = reduce(lid, s);
    let rstd = inverseSqrt(max(total.m2 / total.n, 0.0) + params.eps);
    for (var i = lid; i < len; i += WG) {
        let c = c0 + i / div;
        var v = ((f32(x[base + i]) - shift) - total.mean) * rstd * f32(gamma[c]) + f32(beta[c]);
        if silu {
            v = v / (1.0 + exp(-v));
        }
        y[base + i] = T(v);
    }
}

@compute @workgroup_size(WG)
fn gn_single(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let bg = wid.y * nwg.x + wid.x;
    if bg >= params.n {
        return;
    }
    // This group's first channel: (b * G + g) -> g * (C / G).
    let c0 = (bg % (params.channels / params.channels_per_group)) * params.channels_per_group;
    normalise_range(lid, bg * params.group_len, params.group_len, c0, params.spatial, params.silu != 0u);
}

@compute @workgroup_size(WG)
fn layer_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * nwg.x + wid.x;
    if row >= params.n {
        return;
    }
    normalise_range(lid, row * params.group_len, params.group_len, 0u, 1u, false);
}
