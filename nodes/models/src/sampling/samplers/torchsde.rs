//! ComfyUI's `BrownianTreeNoiseSampler`, bit for bit: the noise of `dpmpp_sde` and `dpmpp_2m_sde` as ComfyUI draws
//! it on the CPU.
//!
//! Mirrors:
//!
//! - `comfy/k_diffusion/sampling.py` (rattus128/ComfyUI @ 9b039406af3b518885b2cf891942df69d09ee8ae, as
//!   Comfy-Org/ComfyUI): `BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed, cpu=True)` over
//!   `BatchedBrownianTree`, which sorts its times, queries each tree with float32 times on the CPU, multiplies by
//!   the sign and divides by `sqrt(|t1 - t0|)` in the sigmas' dtype (float32). KSampler passes its seed, one integer:
//!   one tree over the whole latent batch (`w0 = zeros_like(x)`). A list of seeds, one per batch item, makes one tree
//!   per item ([`BrownianTreeNoise::per_item`]).
//! - torchsde 0.2.6 `BrownianTree(t0, w0, t1, entropy=seed)`: a `BrownianInterval` (`_brownian/brownian_interval.py`)
//!   with `tol=1e-6`, `pool_size=24`, `halfway_tree=True`, `levy_area_approximation='none'`, float32 of `w0`'s
//!   shape. Times are rounded to 6 decimals (Python's `round(t, 6)`); the interval `[t0, t1]` is split at the
//!   rounded midpoint of each node, whatever is queried, so each node is fixed by its path (`spawn_key = 2 * parent +
//!   (0 left | 1 right)`, `depth`). The root's increment is `randn(seed0) * sqrt(t1 - t0)`; a child's comes from its
//!   parent's `W` by the Brownian bridge `left = ld / h * W + sqrt(ld rd / h) * randn(parent's W seed)`, `right = W -
//!   left`, in float32 with the Python scalars rounded to float32 (as torch multiplies a float32 tensor by a Python
//!   float). Each `randn` is a fresh `torch.Generator().manual_seed(s)` ([`TorchRng`]) with `s` from numpy's
//!   `SeedSequence(entropy=seed, spawn_key=(spawn_key, depth), pool_size=24).generate_state(4)[0]` (the root:
//!   `SeedSequence(seed, pool_size=24).generate_state(3)[0]`). A query `[ta, tb]` is the float32 sum, left to right,
//!   of the nodes that tile it (torchsde's `_loc`). torchsde's LRU cache of 45 increments only saves recomputation
//!   (every node is a pure function of its parent); here a cache bounded by memory does the same.
//! - numpy 2.4.6 `SeedSequence` (`numpy/random/bit_generator.pyx`): O'Neill's `seed_seq` hash ([`SeedSequence`]).
//!
//! Checked against torchsde 0.2.6 and ComfyUI's sampler classes by tests/models/torchsde.rs: every value bit for bit.
//!
//! Where ComfyUI fails, this does not: two times that differ but round to the same 6 decimals make torchsde recurse
//! until Python's stack is exhausted (`RecursionError`); here that increment is 0. A call with `sigma == sigma_next`
//! divides 0 by 0 in ComfyUI (NaN noise); here it is 0.

use std::collections::HashMap;
use std::sync::Arc;

use super::NoiseSource;
use crate::sampling::noise::TorchRng;

/// numpy's `SeedSequence` constants (`bit_generator.pyx`).
const INIT_A: u32 = 0x43b0_d7e5;
const MULT_A: u32 = 0x931e_8875;
const INIT_B: u32 = 0x8b51_f9dd;
const MULT_B: u32 = 0x58f3_8ded;
const MIX_MULT_L: u32 = 0xca01_f9dd;
const MIX_MULT_R: u32 = 0x4973_f715;
const XSHIFT: u32 = 16;

/// torchsde's `BrownianTree` defaults: `pool_size`, and `tol` as the number of decimals times are rounded to.
const POOL_SIZE: usize = 24;
const DECIMALS: usize = 6;

/// numpy's `SeedSequence(entropy, spawn_key=spawn_key, pool_size=pool_size)`, for non-negative integer entropy and
/// spawn-key entries (each split into 32-bit words, lowest first; 0 is one word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedSequence {
    pool: Vec<u32>,
}

/// `_int_to_uint32_array`.
fn words(n: u128, out: &mut Vec<u32>) {
    if n == 0 {
        out.push(0);
    }
    let mut n = n;
    while n > 0 {
        out.push(n as u32);
        n >>= 32;
    }
}

fn hashmix(value: u32, hash_const: &mut u32) -> u32 {
    let mut v = value ^ *hash_const;
    *hash_const = hash_const.wrapping_mul(MULT_A);
    v = v.wrapping_mul(*hash_const);
    v ^ (v >> XSHIFT)
}

fn mix(x: u32, y: u32) -> u32 {
    let r = MIX_MULT_L.wrapping_mul(x).wrapping_sub(MIX_MULT_R.wrapping_mul(y));
    r ^ (r >> XSHIFT)
}

impl SeedSequence {
    /// `pool_size` must be at least 4, as numpy requires.
    pub fn new(entropy: u128, spawn_key: &[u128], pool_size: usize) -> SeedSequence {
        assert!(pool_size >= 4, "SeedSequence: pool_size {pool_size} < 4");
        // get_assembled_entropy: run entropy, zero-padded to the pool size when there is a spawn key.
        let mut ent = Vec::new();
        words(entropy, &mut ent);
        let mut spawn = Vec::new();
        for &k in spawn_key {
            words(k, &mut spawn);
        }
        if !spawn.is_empty() && ent.len() < pool_size {
            ent.resize(pool_size, 0);
        }
        ent.extend(spawn);
        // mix_entropy
        let mut hc = INIT_A;
        let mut pool: Vec<u32> = (0..pool_size).map(|i| hashmix(ent.get(i).copied().unwrap_or(0), &mut hc)).collect();
        for src in 0..pool_size {
            for dst in 0..pool_size {
                if src != dst {
                    let h = hashmix(pool[src], &mut hc);
                    pool[dst] = mix(pool[dst], h);
                }
            }
        }
        for &e in ent.iter().skip(pool_size) {
            for p in pool.iter_mut() {
                let h = hashmix(e, &mut hc);
                *p = mix(*p, h);
            }
        }
        SeedSequence { pool }
    }

    /// `generate_state(n_words)` (uint32).
    pub fn generate_state(&self, n_words: usize) -> Vec<u32> {
        let mut hc = INIT_B;
        (0..n_words)
            .map(|i| {
                let mut v = self.pool[i % self.pool.len()] ^ hc;
                hc = hc.wrapping_mul(MULT_B);
                v = v.wrapping_mul(hc);
                v ^ (v >> XSHIFT)
            })
            .collect()
    }
}

/// Python's `round(t, 6)`: the nearest double to `t` rounded to 6 decimals (ties to even on `t`'s exact value),
/// which Rust's exact formatting and correctly rounded parsing give too.
fn round6(t: f64) -> f64 {
    if !t.is_finite() {
        return t;
    }
    format!("{t:.DECIMALS$}").parse().expect("a formatted float parses")
}

/// `torch.randn(len, generator=torch.Generator().manual_seed(seed))`, float32.
fn randn(seed: u32, len: usize) -> Vec<f32> {
    TorchRng::new(u64::from(seed)).randn(&[len])
}

/// A node of the halfway tree: its path from the root (`key`, `depth`, as torchsde's spawn key) and its interval.
#[derive(Debug, Clone, Copy)]
struct Node {
    key: u128,
    depth: u32,
    start: f64,
    end: f64,
}

impl Node {
    fn mid(&self) -> f64 {
        round6(0.5 * (self.end + self.start))
    }

    fn child(&self, left: bool) -> Node {
        let mid = self.mid();
        let (start, end) = if left { (self.start, mid) } else { (mid, self.end) };
        Node { key: 2 * self.key + u128::from(!left), depth: self.depth + 1, start, end }
    }
}

/// A node's (`key`, `depth`).
type NodeId = (u128, u32);

/// Paths deeper than this cannot happen with 6-decimal times below 10^20; it guards the recursion.
const MAX_DEPTH: u32 = 120;

/// torchsde 0.2.6's `BrownianTree(t0, w0 = zeros(len) float32, t1, entropy)` (see the module docs): increments
/// `W(tb) - W(ta)` of one Brownian motion over `[t0, t1]`, float32, the same values as torchsde's.
pub struct BrownianTree {
    entropy: u64,
    len: usize,
    start: f64,
    end: f64,
    root_w: Arc<[f32]>,
    /// Computed increments by node (`key`, `depth`), with when each was last used.
    cache: HashMap<NodeId, (Arc<[f32]>, u64)>,
    capacity: usize,
    clock: u64,
}

impl BrownianTree {
    /// The tree over `[t0, t1]` (`t0 <= t1`, as torchsde requires) for increments of `len` values.
    pub fn new(t0: f64, t1: f64, len: usize, entropy: u64) -> BrownianTree {
        assert!(t0 <= t1, "BrownianTree: t0 {t0} > t1 {t1}");
        let seeds = SeedSequence::new(u128::from(entropy), &[], POOL_SIZE).generate_state(3);
        // `self._randn(initial_W_seed) * math.sqrt(t1 - t0)`, with the times as given (not rounded).
        let scale = (t1 - t0).sqrt() as f32;
        let root_w: Arc<[f32]> = randn(seeds[0], len).into_iter().map(|z| z * scale).collect();
        // Enough for the paths to the two ends of a query and the nodes between them, bounded to 64 MiB.
        let capacity = ((64 << 20) / (4 * len.max(1))).clamp(45, 512);
        BrownianTree {
            entropy,
            len,
            start: round6(t0),
            end: round6(t1),
            root_w,
            cache: HashMap::new(),
            capacity,
            clock: 0,
        }
    }

    /// Values per increment.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `tree(ta, tb)` for `ta <= tb`: `W(tb) - W(ta)`, times clamped into `[t0, t1]` as torchsde does (with a
    /// warning there).
    pub fn increment(&mut self, ta: f64, tb: f64) -> Vec<f32> {
        assert!(ta <= tb, "BrownianTree: query times {ta} > {tb}");
        let ta = ta.clamp(self.start, self.end);
        let tb = tb.clamp(self.start, self.end);
        let (ra, rb) = (round6(ta), round6(tb));
        if ta == tb || ra == rb {
            return vec![0.0; self.len];
        }
        let root = Node { key: 0, depth: 0, start: self.start, end: self.end };
        let mut nodes = Vec::new();
        Self::tile(root, ra, rb, &mut nodes);
        let mut w = self.node_w(&nodes[0]).to_vec();
        for n in &nodes[1..] {
            let wi = self.node_w(n);
            for (a, b) in w.iter_mut().zip(wi.iter()) {
                *a += *b;
            }
        }
        w
    }

    /// The nodes that tile `[ta, tb]`, left to right (torchsde's `_loc_inner` from the root).
    fn tile(node: Node, ta: f64, tb: f64, out: &mut Vec<Node>) {
        if ta == node.start && tb == node.end {
            out.push(node);
            return;
        }
        assert!(node.depth < MAX_DEPTH, "BrownianTree: [{ta}, {tb}] not resolved at depth {MAX_DEPTH}");
        let mid = node.mid();
        if tb <= mid {
            Self::tile(node.child(true), ta, tb, out);
        } else if ta >= mid {
            Self::tile(node.child(false), ta, tb, out);
        } else {
            Self::tile(node.child(true), ta, mid, out);
            Self::tile(node.child(false), mid, tb, out);
        }
    }

    /// The increment over `node`, from the deepest cached node on its path down.
    fn node_w(&mut self, node: &Node) -> Arc<[f32]> {
        if node.depth == 0 {
            return self.root_w.clone();
        }
        // The path: the nodes from the root to `node`.
        let mut path = vec![Node { key: 0, depth: 0, start: self.start, end: self.end }];
        for d in 1..=node.depth {
            let left = (node.key >> (node.depth - d)) & 1 == 0;
            let next = path[path.len() - 1].child(left);
            path.push(next);
        }
        let mut from = node.depth as usize;
        while from > 0 && !self.cache.contains_key(&(path[from].key, path[from].depth)) {
            from -= 1;
        }
        let mut w = if from == 0 { self.root_w.clone() } else { self.touch(&path[from]) };
        for d in from + 1..path.len() {
            w = self.child_w(&path[d - 1], &w, path[d].key & 1 == 0);
            self.insert(&path[d], w.clone());
        }
        w
    }

    /// `_increment_and_space_time_levy_area` without H: the child's increment from its parent's `w`.
    fn child_w(&self, parent: &Node, w: &[f32], left: bool) -> Arc<[f32]> {
        let mid = parent.mid();
        let h_reciprocal = 1.0 / (parent.end - parent.start);
        let left_diff = mid - parent.start;
        let right_diff = parent.end - mid;
        let var = left_diff * right_diff * h_reciprocal;
        let seed = SeedSequence::new(u128::from(self.entropy), &[parent.key, u128::from(parent.depth)], POOL_SIZE)
            .generate_state(1)[0];
        let noise = randn(seed, self.len);
        // mean = left_diff * W * h_reciprocal; left_W = mean + sqrt(var) * noise: float32 tensor ops, scalars as f32.
        let (ld, hr, sd) = (left_diff as f32, h_reciprocal as f32, var.sqrt() as f32);
        w.iter()
            .zip(&noise)
            .map(|(&wv, &z)| {
                let left_w = ld * wv * hr + sd * z;
                if left { left_w } else { wv - left_w }
            })
            .collect()
    }

    fn touch(&mut self, node: &Node) -> Arc<[f32]> {
        self.clock += 1;
        let entry = self.cache.get_mut(&(node.key, node.depth)).expect("cached");
        entry.1 = self.clock;
        entry.0.clone()
    }

    fn insert(&mut self, node: &Node, w: Arc<[f32]>) {
        if self.cache.len() >= self.capacity {
            let oldest = self.cache.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.cache.remove(&k);
            }
        }
        self.clock += 1;
        self.cache.insert((node.key, node.depth), (w, self.clock));
    }
}

/// ComfyUI's `BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed, cpu=True)` on a float32 latent (see the module
/// docs): `noise(sigma, sigma_next) = sign * (W(t1) - W(t0)) / sqrt(|sigma_next - sigma|)` in float32, with the
/// sigmas as float32.
pub struct BrownianTreeNoise {
    trees: Vec<BrownianTree>,
    /// `BatchedBrownianTree.sign`: -1 when `sigma_min == sigma_max` (its `sort` puts equal times the other way).
    sign: f32,
    buf: Vec<f32>,
}

impl BrownianTreeNoise {
    /// As KSampler runs it: `seed` is ComfyUI's `extra_args["seed"]` (the KSampler seed), one tree over the whole
    /// latent of `len` values; `sigmas` the run's, whose smallest positive and largest value bound the tree.
    pub fn new(seed: u64, sigmas: &[f64], len: usize) -> BrownianTreeNoise {
        Self::with_trees(&[seed], sigmas, len)
    }

    /// `BatchedBrownianTree` given a list of seeds, one per batch item: one tree per item over `item_len` values,
    /// their increments concatenated in batch order.
    pub fn per_item(seeds: &[u64], sigmas: &[f64], item_len: usize) -> BrownianTreeNoise {
        Self::with_trees(seeds, sigmas, item_len)
    }

    fn with_trees(seeds: &[u64], sigmas: &[f64], len: usize) -> BrownianTreeNoise {
        // `sigmas[sigmas > 0].min(), sigmas.max()`, float32 as ComfyUI's sigmas are.
        let sigma_min = sigmas.iter().copied().filter(|&s| s > 0.0).fold(f64::INFINITY, f64::min) as f32;
        let sigma_max = sigmas.iter().copied().fold(f64::NEG_INFINITY, f64::max) as f32;
        assert!(sigma_min.is_finite() && sigma_max.is_finite(), "BrownianTreeNoise: no positive sigma");
        let (t0, t1, sign) =
            if sigma_min < sigma_max { (sigma_min, sigma_max, 1.0) } else { (sigma_max, sigma_min, -1.0) };
        let trees = seeds.iter().map(|&s| BrownianTree::new(f64::from(t0), f64::from(t1), len, s)).collect();
        BrownianTreeNoise { trees, sign, buf: Vec::new() }
    }
}

impl NoiseSource for BrownianTreeNoise {
    fn fill_noise(&mut self, sigma: f64, sigma_next: f64, out: &mut [f32]) {
        let n: usize = self.trees.iter().map(BrownianTree::len).sum();
        assert_eq!(out.len(), n, "BrownianTreeNoise: a latent of {} values for trees of {n}", out.len());
        let (a, b) = (sigma as f32, sigma_next as f32);
        if a == b {
            out.fill(0.0);
            return;
        }
        let (lo, hi, sign) = if a < b { (a, b, 1.0) } else { (b, a, -1.0) };
        let factor = self.sign * sign;
        let scale = (b - a).abs().sqrt();
        let mut at = 0;
        for tree in &mut self.trees {
            self.buf = tree.increment(f64::from(lo), f64::from(hi));
            for (o, &w) in out[at..at + self.buf.len()].iter_mut().zip(&self.buf) {
                *o = (w * factor) / scale;
            }
            at += self.buf.len();
        }
    }
}
