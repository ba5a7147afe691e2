//! `models::sampling::noise` against PyTorch 2.11.0's CPU `torch.randn` and ComfyUI's `prepare_noise`, bit for bit.
//!
//! tests/fixtures/noise/torch_randn.json holds torch's float32 bit patterns (all of them for small tensors, otherwise
//! the sha256 of the whole tensor plus samples), made by tests/fixtures/noise/make_noise_fixture.py on x86-64 Linux
//! with CPU capability AVX512 (which runs the AVX2 kernel), and at ATEN_CPU_CAPABILITY=default for the
//! `scalar_kernel` section. No test runs Python.

use std::path::Path;
use std::time::Instant;

use models::sampling::noise::{NormalKernel, TorchRng, prepare_noise, randn};
use serde_json::Value;

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/noise/torch_randn.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array().unwrap().iter().map(|x| usize::try_from(x.as_u64().unwrap()).unwrap()).collect()
}

/// Checks `got` against one encoded torch tensor: element count, every stored bit pattern, and the sha256 of all
/// elements' little-endian f32 bytes when the fixture has one. Returns a description of the first difference.
fn compare(what: &str, want: &Value, got: &[f32]) -> Result<(), String> {
    let numel = usize::try_from(want["numel"].as_u64().unwrap()).unwrap();
    if got.len() != numel {
        return Err(format!("{what}: {} elements, torch has {numel}", got.len()));
    }
    let bits = want["bits"].as_array().unwrap();
    let index = match want.get("index") {
        Some(ix) => usizes(ix),
        None => (0..numel).collect(),
    };
    assert_eq!(index.len(), bits.len(), "{what}: malformed fixture");
    for (&i, b) in index.iter().zip(bits) {
        let w = u32::try_from(b.as_u64().unwrap()).unwrap();
        if got[i].to_bits() != w {
            return Err(format!(
                "{what}: element {i} is {:e} ({:#010x}), torch has {:e} ({w:#010x})",
                got[i],
                got[i].to_bits(),
                f32::from_bits(w)
            ));
        }
    }
    if let Some(sha) = want.get("sha256") {
        let bytes: Vec<u8> = got.iter().flat_map(|x| x.to_le_bytes()).collect();
        let mine = hex(&sha256(&bytes));
        if mine != sha.as_str().unwrap() {
            return Err(format!(
                "{what}: the {} sampled elements match but the sha256 of all {numel} differs",
                index.len()
            ));
        }
    }
    Ok(())
}

fn check_all(failures: Vec<String>, total: usize) {
    assert!(failures.is_empty(), "{} of {total} tensors differ from torch:\n{}", failures.len(), failures.join("\n"));
}

fn check_fresh(cases: &Value, kernel: NormalKernel) -> usize {
    let cases = cases.as_array().unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let seed = case["seed"].as_u64().unwrap();
        let shape = usizes(&case["shape"]);
        let got = TorchRng::with_kernel(seed, kernel).randn(&shape);
        if let Err(e) = compare(&format!("seed {seed} shape {shape:?}"), case, &got) {
            failures.push(e);
        }
    }
    check_all(failures, cases.len());
    cases.len()
}

fn check_streams(streams: &Value, kernel: NormalKernel) -> usize {
    let mut failures = Vec::new();
    let mut total = 0;
    for stream in streams.as_array().unwrap() {
        let seed = stream["seed"].as_u64().unwrap();
        let mut rng = TorchRng::with_kernel(seed, kernel);
        for (k, call) in stream["calls"].as_array().unwrap().iter().enumerate() {
            let shape = usizes(&call["shape"]);
            let got = rng.randn(&shape);
            if let Err(e) = compare(&format!("seed {seed} call {k} shape {shape:?}"), call, &got) {
                failures.push(e);
            }
            total += 1;
        }
    }
    check_all(failures, total);
    total
}

#[test]
fn fixture_comes_from_the_avx2_kernel_of_the_pinned_torch() {
    let f = fixture();
    assert!(f["torch"].as_str().unwrap().starts_with("2.11.0"), "{}", f["torch"]);
    assert!(matches!(f["cpu_capability"].as_str().unwrap(), "AVX2" | "AVX512"), "{}", f["cpu_capability"]);
    assert_eq!(f["scalar_kernel"]["cpu_capability"], "DEFAULT");
}

/// `torch.randn(shape, generator=torch.manual_seed(seed))` for seeds 0, 1, 5, 42, 2^32+5, 2^63-1, 2^63, 2^64-1 and
/// shapes [1,4,64,64], [2,4,8,8], [1,4,3,5] (60: redrawn tail), [3,5,7], and numel 0, 1, 7, 15, 16, 17, 31, 33;
/// plus [1,4,128,128] and [1,16,128,128].
#[test]
fn fresh_generators_match_torch_randn_bit_for_bit() {
    let f = fixture();
    let n = check_fresh(&f["fresh"], NormalKernel::Avx2);
    assert!(n >= 90, "only {n} cases");
}

/// Elements where a different FMA contraction in log256_ps / sincos256_ps would show (see noise.rs).
#[test]
fn fma_contraction_witnesses_match_torch() {
    check_fresh(&fixture()["witnesses"], NormalKernel::Avx2);
}

/// Successive `torch.randn` calls on one generator, mixed sizes: the stream continues across the float (>= 16) and
/// double (< 16) paths, and the double path's cached second sample survives the float calls in between.
#[test]
fn successive_calls_continue_the_torch_stream() {
    let n = check_streams(&fixture()["streams"], NormalKernel::Avx2);
    assert!(n >= 25, "only {n} calls");
}

#[test]
fn prepare_noise_matches_comfyui() {
    let f = fixture();
    let cases = f["prepare_noise"].as_array().unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let seed = case["seed"].as_u64().unwrap();
        let shape = usizes(&case["shape"]);
        let inds = (!case["batch_index"].is_null()).then(|| usizes(&case["batch_index"]));
        let got = prepare_noise(&shape, seed, inds.as_deref());
        if let Err(e) = compare(&format!("seed {seed} shape {shape:?} batch_index {inds:?}"), case, &got) {
            failures.push(e);
        }
    }
    check_all(failures, cases.len());
}

/// torch's portable kernel (capability DEFAULT: libm logf/cosf/sinf), reproduced with this platform's libm; the
/// fixture comes from glibc, so other C libraries may round differently now and then.
#[test]
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), ignore = "reference made with glibc's libm")]
fn scalar_kernel_matches_torch_default_capability() {
    let f = fixture();
    check_fresh(&f["scalar_kernel"]["fresh"], NormalKernel::Scalar);
    check_streams(&f["scalar_kernel"]["streams"], NormalKernel::Scalar);
}

#[test]
fn the_two_kernels_differ_only_from_16_elements() {
    for n in [1, 7, 15] {
        assert_eq!(TorchRng::new(3).randn(&[n]), TorchRng::with_kernel(3, NormalKernel::Scalar).randn(&[n]));
    }
    let a = TorchRng::new(3).randn(&[1, 4, 64, 64]);
    let b = TorchRng::with_kernel(3, NormalKernel::Scalar).randn(&[1, 4, 64, 64]);
    let differ = a.iter().zip(&b).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
    assert!(differ > 1000, "only {differ} of 16384 differ");
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5), "same distribution, close values");
}

/// The engine is std::mt19937: the C++ standard requires the 10000th output for the default seed 5489 to be
/// 4123659995 ([rand.predef]).
#[test]
fn engine_is_std_mt19937() {
    let mut rng = TorchRng::new(5489);
    let v = (0..10_000).map(|_| rng.next_u32()).last().unwrap();
    assert_eq!(v, 4_123_659_995);
}

#[test]
fn random64_is_two_draws_high_first() {
    let mut a = TorchRng::new(7);
    let mut b = TorchRng::new(7);
    let (hi, lo) = (a.next_u32(), a.next_u32());
    assert_eq!(b.next_u64(), (u64::from(hi) << 32) | u64::from(lo));
}

#[test]
fn only_the_low_32_bits_of_the_seed_matter() {
    let seeds = [5, (1 << 32) + 5, u64::MAX - u64::from(u32::MAX) + 5];
    let noise: Vec<Vec<f32>> = seeds.iter().map(|&s| randn(&[2, 4, 8, 8], s)).collect();
    assert_eq!(noise[0], noise[1]);
    assert_eq!(noise[0], noise[2]);
    assert_eq!(TorchRng::new(seeds[1]).initial_seed(), seeds[1]);
    assert_ne!(randn(&[16], 5), randn(&[16], 6));
}

#[test]
fn api_shortcuts_agree() {
    let shape = [1, 4, 9, 9];
    let a = randn(&shape, 99);
    let mut b = vec![0.0; 324];
    TorchRng::new(99).randn_into(&mut b);
    assert_eq!(a, b);
    assert_eq!(prepare_noise(&shape, 99, None), a);
    assert_eq!(prepare_noise(&shape, 99, Some(&[0])), a);
    assert!(randn(&[0], 1).is_empty() && randn(&[3, 0, 2], 1).is_empty());
    // A clone carries the whole state, cached normal included.
    let mut r = TorchRng::new(1);
    r.randn(&[3]);
    let mut c = r.clone();
    assert_eq!(r.randn(&[1]), c.randn(&[1]));
    assert_eq!(r.randn(&[20]), c.randn(&[20]));
}

#[test]
#[should_panic(expected = "batch_index has 2 entries for a batch of 3")]
fn prepare_noise_rejects_a_batch_index_of_the_wrong_length() {
    prepare_noise(&[3, 4, 8, 8], 0, Some(&[0, 1]));
}

/// A 1024x1024 SDXL latent, [1, 4, 128, 128], takes well under a second even unoptimised.
#[test]
fn speed_sanity() {
    let t = Instant::now();
    let x = randn(&[1, 4, 128, 128], 0);
    let dt = t.elapsed();
    eprintln!("randn [1,4,128,128]: {dt:?}");
    assert_eq!(x.len(), 65536);
    assert!(dt.as_secs_f64() < 1.0, "{dt:?}");
}

/// FIPS 180-4 SHA-256, for the fixture's whole-tensor digests.
fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&(data.len() as u64 * 8).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, c) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes(c.try_into().unwrap());
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (o, x) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn sha256_known_answers() {
    assert_eq!(hex(&sha256(b"")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_eq!(hex(&sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    let long = vec![b'a'; 1000];
    assert_eq!(hex(&sha256(&long)), "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3");
}
