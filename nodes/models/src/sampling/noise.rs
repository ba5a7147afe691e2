//! PyTorch's CPU random generator, bit for bit: `torch.manual_seed(seed)` + `torch.randn(shape)` for float32, and
//! ComfyUI's `prepare_noise` (`comfy/sample.py`) on top of it.
//!
//! Mirrors PyTorch 2.11.0:
//!
//! - `aten/src/ATen/core/MT19937RNGEngine.h`: the mt19937 engine and how a 64-bit seed initialises it;
//! - `aten/src/ATen/CPUGeneratorImpl.cpp`: `random()` (one 32-bit draw), `random64()` (two, the first one high) and
//!   the cached second Box-Muller sample of `normal_distribution<double>`;
//! - `aten/src/ATen/core/DistributionsHelper.h`, `TransformationHelper.h`: `uniform_real_distribution` and
//!   `normal_distribution<double>`;
//! - `aten/src/ATen/native/cpu/DistributionTemplates.h`: `normal_kernel`, `normal_fill`, `normal_fill_AVX2` and
//!   `normal_fill_16_AVX2`;
//! - `aten/src/ATen/native/cpu/avx_mathfun.h`: `log256_ps` and `sincos256_ps` (Cephes polynomials), one lane at a time.
//!
//! `torch.randn` of a float32 CPU tensor goes one of two ways (`normal_kernel`):
//!
//! - numel >= 16: draw numel float uniforms `(random() & (2^24 - 1)) * 2^-24`, then Box-Muller over each block of
//!   16 (lane j pairs with lane j + 8); when numel % 16 != 0, draw 16 fresh uniforms over the last 16 elements and
//!   redo that block. On x86-64 CPUs with AVX2 (and on AVX512 ones: `normal_stub` is registered with
//!   `REGISTER_NO_AVX512_DISPATCH`, so they run the AVX2 kernel too) the block transform is `normal_fill_16_AVX2`,
//!   whose `log`/`sin`/`cos` are avx_mathfun's polynomials rather than libm. That is [`NormalKernel::Avx2`], the
//!   default here, and what ComfyUI users on x86-64 get.
//! - numel < 16: one `normal_distribution<double>` sample per element (53-bit double uniforms, `log1p`/`sin`/`cos`
//!   in double, the second sample of each pair cached in the generator for the next draw), cast to float.
//!
//! The seed: `manual_seed` accepts 0..=2^64-1 (negative Python ints wrap modulo 2^64), the engine keeps only its low
//! 32 bits, so seeds that agree mod 2^32 give the same stream (`initial_seed` still reports the full value).
//!
//! What matches, as f32 bit patterns (signed zeros included), checked against the torch 2.11.0+cu130 x86-64 Linux
//! wheel (glibc 2.36) by `tests/models/noise.rs`:
//!
//! - [`NormalKernel::Avx2`], numel >= 16: torch at CPU capability AVX2 or AVX512, any shape, any seed, any sequence
//!   of calls. Pure f32 arithmetic and correctly rounded `mul_add`, so it does not depend on the platform running it.
//! - numel < 16: the same, given a libm whose double `log1p`/`sin`/`cos` round as glibc's do (torch calls the
//!   platform libm there too, so e.g. torch on macOS and this code on macOS should agree; not checked).
//! - [`NormalKernel::Scalar`]: torch at capability DEFAULT, given glibc's `logf`/`sinf`/`cosf`.
//!
//! Not reproduced: the POWER (VSX) kernel, half/bfloat16/double tensors, non-contiguous outputs, CUDA generators.

use std::f64::consts::PI;
use std::fmt;

/// `MERSENNE_STATE_N`, `MERSENNE_STATE_M` and the mt19937 constants of `MT19937RNGEngine.h`.
const STATE_N: usize = 624;
const STATE_M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UMASK: u32 = 0x8000_0000;
const LMASK: u32 = 0x7fff_ffff;

/// `at::mt19937`: the standard 32-bit Mersenne Twister, seeded from the low 32 bits of a 64-bit seed.
#[derive(Clone)]
struct Mt19937 {
    state: [u32; STATE_N],
    /// Draws left before the next twist, plus one (`left_`); 1 right after seeding, so the first draw twists.
    left: usize,
    next: usize,
}

impl Mt19937 {
    /// `init_with_uint32`: `state_[0] = seed & 0xffffffff`, then the usual Knuth recurrence.
    fn new(seed: u64) -> Mt19937 {
        let mut state = [0u32; STATE_N];
        state[0] = seed as u32;
        for j in 1..STATE_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(j as u32);
        }
        Mt19937 { state, left: 1, next: 0 }
    }

    fn twist(u: u32, v: u32) -> u32 {
        (((u & UMASK) | (v & LMASK)) >> 1) ^ if v & 1 != 0 { MATRIX_A } else { 0 }
    }

    /// `next_state`, in PyTorch's three loops.
    fn next_state(&mut self) {
        let s = &mut self.state;
        for i in 0..STATE_N - STATE_M {
            s[i] = s[i + STATE_M] ^ Self::twist(s[i], s[i + 1]);
        }
        for i in STATE_N - STATE_M..STATE_N - 1 {
            s[i] = s[i + STATE_M - STATE_N] ^ Self::twist(s[i], s[i + 1]);
        }
        s[STATE_N - 1] = s[STATE_M - 1] ^ Self::twist(s[STATE_N - 1], s[0]);
        self.left = STATE_N;
        self.next = 0;
    }

    /// `operator()`: one tempered 32-bit output.
    fn next_u32(&mut self) -> u32 {
        self.left -= 1;
        if self.left == 0 {
            self.next_state();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }
}

/// Which of PyTorch's CPU kernels to reproduce for float32 tensors of 16 elements or more. (Smaller tensors always
/// take the double-precision path, which is the same everywhere up to the platform's libm.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NormalKernel {
    /// `normal_fill_16_AVX2` with avx_mathfun's `log256_ps`/`sincos256_ps`: PyTorch on x86-64 CPUs with AVX2 or
    /// AVX512 (`torch.backends.cpu.get_cpu_capability()` is "AVX2" or "AVX512"), i.e. nearly every ComfyUI install
    /// on a PC. Pure f32 arithmetic, so it gives the same bits on any platform this crate runs on.
    #[default]
    Avx2,
    /// The portable `normal_fill_16` with libm's `logf`/`cosf`/`sinf`: PyTorch at capability "DEFAULT" (x86-64
    /// without AVX2, or `ATEN_CPU_CAPABILITY=default`) and on aarch64 builds. Bit-identical only where this
    /// process's `logf`/`sinf`/`cosf` are the ones PyTorch called (checked: x86-64 glibc against the x86-64 wheel at
    /// `ATEN_CPU_CAPABILITY=default`; macOS' libm, for one, rounds differently now and then).
    Scalar,
}

/// A PyTorch CPU generator (`torch.Generator()` / the one `torch.manual_seed` returns): same seed, same calls, same
/// numbers, bit for bit.
///
/// Successive calls continue one stream exactly as successive `torch.randn(..., generator=g)` calls on one
/// generator do, including the cached second sample of the double path (a `randn` of fewer than 16 elements uses
/// up an odd number of Box-Muller samples and leaves one for the next small `randn`; the >= 16 path neither reads
/// nor clears it).
///
/// For samplers: ComfyUI's `default_noise_sampler` (ancestral/SDE steps, `comfy/k_diffusion/sampling.py`) draws
/// successive `torch.randn(x.size())` from `torch.Generator(x.device).manual_seed(seed)`, with `seed + 1` when the
/// latent is on the CPU; that CPU stream is `TorchRng::new(seed + 1)`. On a CUDA latent it is CUDA's Philox
/// generator, which this does not reproduce.
///
/// ```
/// use models::sampling::noise::TorchRng;
/// // torch.randn(3, generator=torch.manual_seed(0)) == [1.5410, -0.2934, -2.1788]
/// let x = TorchRng::new(0).randn(&[3]);
/// assert_eq!(x, [1.540_996_1_f32, -0.293_428_9, -2.178_789_4]);
/// ```
#[derive(Clone)]
pub struct TorchRng {
    mt: Mt19937,
    seed: u64,
    kernel: NormalKernel,
    /// `next_double_normal_sample_`.
    next_double_normal: Option<f64>,
}

impl fmt::Debug for TorchRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TorchRng")
            .field("initial_seed", &self.seed)
            .field("kernel", &self.kernel)
            .field("next_double_normal", &self.next_double_normal)
            .finish_non_exhaustive()
    }
}

impl TorchRng {
    /// `torch.manual_seed(seed)` (or `torch.Generator().manual_seed(seed)`), reproducing the AVX2 kernel.
    pub fn new(seed: u64) -> TorchRng {
        TorchRng::with_kernel(seed, NormalKernel::Avx2)
    }

    /// Like [`TorchRng::new`], reproducing the given kernel for `randn` of 16 elements or more.
    pub fn with_kernel(seed: u64, kernel: NormalKernel) -> TorchRng {
        TorchRng { mt: Mt19937::new(seed), seed, kernel, next_double_normal: None }
    }

    /// `generator.initial_seed()`: the full 64-bit seed, though only its low 32 bits seed the engine.
    pub fn initial_seed(&self) -> u64 {
        self.seed
    }

    /// The kernel `randn` reproduces for 16 elements or more.
    pub fn kernel(&self) -> NormalKernel {
        self.kernel
    }

    /// `CPUGeneratorImpl::random()`: the next 32-bit mt19937 output.
    pub fn next_u32(&mut self) -> u32 {
        self.mt.next_u32()
    }

    /// `CPUGeneratorImpl::random64()`: two draws, the first one in the high half.
    pub fn next_u64(&mut self) -> u64 {
        let hi = self.mt.next_u32();
        let lo = self.mt.next_u32();
        (u64::from(hi) << 32) | u64::from(lo)
    }

    /// `uniform_real_distribution<float>(0, 1)`: the low 24 bits of one draw, times 2^-24; exact.
    fn uniform_f32(&mut self) -> f32 {
        (self.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    /// `uniform_real_distribution<double>(0, 1)`: the low 53 bits of `random64()`, times 2^-53; exact.
    fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() & ((1 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `normal_distribution<double>(mean, std)`: Box-Muller with u1 for the angle and u2 for the radius; returns
    /// `r cos θ` and caches `r sin θ` for the next call.
    fn normal_f64(&mut self, mean: f64, std: f64) -> f64 {
        if let Some(sample) = self.next_double_normal.take() {
            return sample * std + mean;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        // f64::ln_1p/sin/cos are the platform libm's log1p/sin/cos, as PyTorch's `::log1p`/`::sin`/`::cos`.
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * PI * u1;
        self.next_double_normal = Some(r * theta.sin());
        r * theta.cos() * std + mean
    }

    /// `torch.randn(shape, generator=self)` for float32 on the CPU, row-major (contiguous) like the tensor's storage.
    pub fn randn(&mut self, shape: &[usize]) -> Vec<f32> {
        let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).expect("randn: numel overflows usize");
        let mut out = vec![0.0; numel];
        self.randn_into(&mut out);
        out
    }

    /// [`TorchRng::randn`] into a buffer: `torch.randn(out.len(), generator=self)` (only the element count matters).
    pub fn randn_into(&mut self, out: &mut [f32]) {
        // `normal_kernel` with mean 0, std 1, on a contiguous float tensor.
        let (mean, std) = (0.0, 1.0);
        let n = out.len();
        if n < 16 {
            // The serial path: `static_cast<float>(normal_distribution<double>(mean, std)(generator))`.
            for x in out {
                *x = self.normal_f64(f64::from(mean), f64::from(std)) as f32;
            }
            return;
        }
        let fill_16 = match self.kernel {
            NormalKernel::Avx2 => normal_fill_16_avx2,
            NormalKernel::Scalar => normal_fill_16_scalar,
        };
        out.fill_with(|| self.uniform_f32());
        for block in out.chunks_exact_mut(16) {
            fill_16(block, mean, std);
        }
        if !n.is_multiple_of(16) {
            // "Recompute the last 16 values": fresh uniforms over the tail, overlapping the last full block.
            let tail = &mut out[n - 16..];
            tail.fill_with(|| self.uniform_f32());
            fill_16(tail, mean, std);
        }
    }
}

/// `torch.randn(shape, generator=torch.manual_seed(seed))`, float32, with the AVX2 kernel.
pub fn randn(shape: &[usize], seed: u64) -> Vec<f32> {
    TorchRng::new(seed).randn(shape)
}

/// ComfyUI's `comfy.sample.prepare_noise(latent, seed, noise_inds)` for a float32 latent of `shape` ([B, C, H, W] or
/// any [B, ...]): the initial noise KSampler adds, generated on the CPU from `torch.manual_seed(seed)` whatever the
/// device, so it does not depend on the GPU.
///
/// - `batch_index: None` (the usual case): one `torch.randn(shape)` for the whole batch.
/// - `batch_index: Some(inds)` (a latent carrying `"batch_index"`, e.g. from LatentFromBatch or RepeatLatentBatch):
///   successive `torch.randn([1, ...])` draws on the one generator, the i-th draw (from 0) being the noise of
///   every batch item whose index is i; draws up to the largest index are made, used or not. So item k of the
///   result is what item `inds[k]` would be in a batch drawn item by item, and equal indices share noise.
///
/// Not covered: ComfyUI's nested (multi-latent) tensors, which draw each part in turn.
///
/// # Panics
///
/// With `batch_index`, if `shape` is empty or `batch_index.len() != shape[0]`.
pub fn prepare_noise(shape: &[usize], seed: u64, batch_index: Option<&[usize]>) -> Vec<f32> {
    let mut rng = TorchRng::new(seed);
    let Some(inds) = batch_index else {
        return rng.randn(shape);
    };
    assert!(!shape.is_empty(), "prepare_noise: a batch_index needs a batch dimension");
    assert_eq!(
        inds.len(),
        shape[0],
        "prepare_noise: batch_index has {} entries for a batch of {}",
        inds.len(),
        shape[0]
    );
    let item: usize = shape[1..].iter().product();
    let mut out = vec![0.0; inds.len() * item];
    let Some(&last) = inds.iter().max() else {
        return out;
    };
    let mut draw = vec![0.0; item];
    for i in 0..=last {
        rng.randn_into(&mut draw);
        for (k, _) in inds.iter().enumerate().filter(|&(_, &ind)| ind == i) {
            out[k * item..(k + 1) * item].copy_from_slice(&draw);
        }
    }
    out
}

/// `2.0f * c10::pi<double>`: computed in double, then rounded to float by `_mm256_set1_ps` (and used as a double in
/// the scalar kernel).
const TWO_PI_F32: f32 = (2.0 * PI) as f32;

/// `normal_fill_16`: lanes j and j + 8 of a block of 16 uniforms become two normals, with libm in f32.
fn normal_fill_16_scalar(data: &mut [f32], mean: f32, std: f32) {
    for j in 0..8 {
        let u1 = 1.0 - data[j]; // [0, 1) -> (0, 1] for log.
        let u2 = data[j + 8];
        let radius = (-2.0 * u1.ln()).sqrt();
        // `2.0f * c10::pi<double> * u2` is a double product, stored into a float.
        let theta = (2.0 * PI * f64::from(u2)) as f32;
        data[j] = radius * theta.cos() * std + mean;
        data[j + 8] = radius * theta.sin() * std + mean;
    }
}

// The AVX2 kernel, one lane at a time.
//
// PyTorch's x86-64 wheels are built by GCC, which contracts a multiply whose only use is an add or subtract into an
// FMA (`-ffp-contract=fast` is GCC's default for C++, and the AVX2 kernels are compiled with `-mfma`); intrinsics
// are plain vector arithmetic to GCC, so this happens inside avx_mathfun too. Where a sum has two products feeding
// it, the first product in statement order is fused. Each `mul_add` below is such a contraction, and each one that
// can change a result was confirmed against torch on its own: unfusing it alone changes some outputs (found by
// trying all 2^24 possible 24-bit draws, then seeded streams containing them), and torch has the fused value there
// (tests/fixtures/noise `witnesses`; the rarest, the DP3 step, shows for 3 of the 2^24 u2 draws). The remaining
// ones give the same bits fused or not, their products being exact: `z * 0.5`, and small integers times short
// constants (`e * LOG_Q2`, `y * MINUS_DP1`, `y * MINUS_DP2`).
// `mul_add` is a correctly rounded fused multiply-add on every platform.

/// `normal_fill_16_AVX2`.
fn normal_fill_16_avx2(data: &mut [f32], mean: f32, std: f32) {
    for j in 0..8 {
        let u1 = 1.0 - data[j];
        let u2 = data[j + 8];
        let radius = (-2.0 * log256(u1)).sqrt();
        let theta = TWO_PI_F32 * u2;
        let (sin, cos) = sincos256(theta);
        // `_mm256_fmadd_ps(n, std, mean)`, written as such in the source; it also turns -0 into +0.
        data[j] = (radius * cos).mul_add(std, mean);
        data[j + 8] = (radius * sin).mul_add(std, mean);
    }
}

/// The smallest normal float, `_ps256_min_norm_pos` (0x00800000).
const MIN_NORM_POS: u32 = 0x0080_0000;
// Constants as avx_mathfun spells them: double literals rounded to float (`as f32` rounds to nearest, like C).
// cephes_SQRTHF, spelt 0.707106781186547524: the same double as FRAC_1_SQRT_2.
const SQRTHF: f32 = std::f64::consts::FRAC_1_SQRT_2 as f32;
const LOG_P: [f32; 9] = [
    7.0376836292E-2_f64 as f32,  // cephes_log_p0
    -1.1514610310E-1_f64 as f32, // cephes_log_p1
    1.1676998740E-1_f64 as f32,  // cephes_log_p2
    -1.2420140846E-1_f64 as f32, // cephes_log_p3
    1.4249322787E-1_f64 as f32,  // cephes_log_p4
    -1.6668057665E-1_f64 as f32, // cephes_log_p5
    2.0000714765E-1_f64 as f32,  // cephes_log_p6
    -2.4999993993E-1_f64 as f32, // cephes_log_p7
    3.3333331174E-1_f64 as f32,  // cephes_log_p8
];
const LOG_Q1: f32 = -2.12194440e-4_f64 as f32; // cephes_log_q1
const LOG_Q2: f32 = 0.693359375_f64 as f32; // cephes_log_q2 (exact)

/// `log256_ps`, one lane: Cephes' logf. NaN for x <= 0 (never the case here: u1 is in [2^-24, 1]).
fn log256(x: f32) -> f32 {
    let invalid = x <= 0.0; // _CMP_LE_OS: false for NaN
    // `_mm256_max_ps(x, min_norm_pos)` returns the second operand unless x is greater.
    let min_norm = f32::from_bits(MIN_NORM_POS);
    let x = if x > min_norm { x } else { min_norm };
    let bits = x.to_bits();
    let imm0 = (bits >> 23) as i32 - 0x7f;
    // Keep the mantissa, exponent of 0.5: x in [0.5, 1).
    let mut x = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = imm0 as f32 + 1.0;
    // if x < SQRTHF { e -= 1; x = x + x - 1 } else { x = x - 1 }, with masks: adding +0 where the mask is off.
    let mask = x < SQRTHF;
    let tmp = if mask { x } else { 0.0 };
    x -= 1.0;
    e -= if mask { 1.0 } else { 0.0 };
    x += tmp;
    let z = x * x;
    let mut y = LOG_P[0];
    for &p in &LOG_P[1..] {
        y = y.mul_add(x, p); // y = y * x + p: contracted
    }
    y *= x;
    // `y = y * z; tmp = e * q1; y = y + tmp`: the first product (y * z) is the one fused.
    y = y.mul_add(z, e * LOG_Q1);
    y -= z * 0.5; // contracted as well, but z * 0.5 is exact
    x += y;
    x = e.mul_add(LOG_Q2, x); // `tmp = e * q2; x = x + tmp`: contracted (and e * q2 is exact anyway)
    if invalid { f32::from_bits(u32::MAX) } else { x }
}

const FOPI: f32 = 1.27323954473516_f64 as f32; // cephes_FOPI, 4 / pi
const MINUS_DP1: f32 = -0.78515625_f64 as f32; // minus_cephes_DP1
const MINUS_DP2: f32 = -2.418_756_484_985_351_6e-4_f64 as f32; // minus_cephes_DP2, -2.4187564849853515625e-4
const MINUS_DP3: f32 = -3.774_894_977_445_941e-8_f64 as f32; // minus_cephes_DP3, -3.77489497744594108e-8
const SINCOF: [f32; 3] = [-1.9515295891E-4_f64 as f32, 8.3321608736E-3_f64 as f32, -1.6666654611E-1_f64 as f32];
const COSCOF: [f32; 3] =
    [2.443315711809948E-005_f64 as f32, -1.388731625493765E-003_f64 as f32, 4.166664568298827E-002_f64 as f32];
const SIGN_MASK: u32 = 0x8000_0000;

/// `sincos256_ps`, one lane: Cephes' sinf/cosf sharing the range reduction. Returns (sin, cos).
fn sincos256(x: f32) -> (f32, f32) {
    let sign_bit_sin = x.to_bits() & SIGN_MASK;
    let mut x = f32::from_bits(x.to_bits() & !SIGN_MASK);
    // j = (int)(x * 4/pi), rounded up to even (`_mm256_cvttps_epi32` truncates; x < 2 pi here).
    let j = (((x * FOPI) as i32) + 1) & !1;
    let y = j as f32;
    let swap_sign_bit_sin = ((j & 4) as u32) << 29;
    let poly_mask = j & 2 == 0; // true: the sine uses the sine polynomial
    // "Extended precision modular arithmetic": x = ((x - y * DP1) - y * DP2) - y * DP3, each step contracted.
    x = y.mul_add(MINUS_DP1, x);
    x = y.mul_add(MINUS_DP2, x);
    x = y.mul_add(MINUS_DP3, x);
    let sign_bit_cos = ((!(j - 2) & 4) as u32) << 29;
    let sign_bit_sin = sign_bit_sin ^ swap_sign_bit_sin;

    let z = x * x;
    // Cosine polynomial for 0 <= x <= pi/4.
    let mut yc = COSCOF[0];
    yc = yc.mul_add(z, COSCOF[1]);
    yc = yc.mul_add(z, COSCOF[2]);
    yc *= z;
    // `y = y * z; tmp = z * 0.5; y = y - tmp`: the first product (y * z) is fused.
    yc = yc.mul_add(z, -(z * 0.5));
    yc += 1.0;
    // Sine polynomial.
    let mut ys = SINCOF[0];
    ys = ys.mul_add(z, SINCOF[1]);
    ys = ys.mul_add(z, SINCOF[2]);
    ys *= z;
    ys = ys.mul_add(x, x);

    // Select with masks and arithmetic exactly as the source does (this decides the sign of zero results).
    let (ysin2, ysin1) = if poly_mask { (ys, 0.0) } else { (0.0, yc) };
    let ys = ys - ysin2;
    let yc = yc - ysin1;
    let sin = ysin1 + ysin2;
    let cos = yc + ys;
    (f32::from_bits(sin.to_bits() ^ sign_bit_sin), f32::from_bits(cos.to_bits() ^ sign_bit_cos))
}
