//! `.pth` state dicts (`models::checkpoint::pth`): what torch.save writes
//! loads (any top-level folder name, wrapper dicts, `module.` prefixes,
//! f16 storages, strided views), and hostile files are refused with an
//! error naming the file and what was wrong, never executed and never a
//! panic: foreign globals (`os.system`, a pickled model class), unknown
//! opcodes, truncated or corrupt archives, storages that lie about their
//! size, views past their storage, absurd sizes. The hostile files are
//! assembled here byte by byte; nothing is ever unpickled by Python.

use std::path::{Path, PathBuf};

use models::checkpoint::pth::{self, state_dict_pickle};
use models::checkpoint::zip::write_stored;

fn tmp(name: &str) -> PathBuf {
    crate::common::scratch_file(name)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A zip with `folder/data.pkl` = `pickle` and `folder/data/<i>` = `storages[i]`.
fn archive(path: &Path, folder: &str, pickle: &[u8], storages: &[&[u8]]) {
    let mut entries: Vec<(String, &[u8])> = vec![(format!("{folder}/data.pkl"), pickle)];
    for (i, s) in storages.iter().enumerate() {
        entries.push((format!("{folder}/data/{i}"), s));
    }
    let refs: Vec<(&str, &[u8])> = entries.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    std::fs::write(path, write_stored(&refs)).unwrap();
}

/// The error text of opening `path`, which must fail and name the file.
fn refused(path: &Path) -> String {
    match pth::open(path) {
        Ok(st) => panic!("{} was accepted: {:?}", path.display(), st.names().collect::<Vec<_>>()),
        Err(e) => {
            let e = e.to_string();
            assert!(e.starts_with(&path.display().to_string()), "error does not name the file: {e}");
            e
        }
    }
}

#[test]
fn written_state_dicts_read_back_under_any_folder_name() {
    let a = [1.0f32, -2.0, 3.5, 0.25, 5.0, 6.0];
    for folder in ["archive", "RealESRGAN_x4plus", "a folder with spaces"] {
        let p = tmp(&format!("rt-{}.pth", folder.len()));
        pth::write(&p, folder, &[("conv.weight", &[2, 3], &a), ("conv.bias", &[2], &[7.0, 8.0])]).unwrap();
        let st = pth::open(&p).unwrap();
        assert_eq!(st.names().collect::<Vec<_>>(), ["conv.bias", "conv.weight"]);
        assert_eq!(st.f32("conv.weight", &[2, 3]).unwrap(), a);
        assert_eq!(st.f32("conv.bias", &[2]).unwrap(), [7.0, 8.0]);
    }
}

#[test]
fn wrappers_prefixes_half_storages_and_strided_views_load() {
    // {"params": {"module.w": half tensor [2, 2] viewed transposed, "module.b": float}, "iter": 5}
    let mut p = b"\x80\x02}(X\x04\x00\x00\x00iterK\x05X\x06\x00\x00\x00params".to_vec();
    let inner = state_dict_pickle(&[("module.w", &[2, 2]), ("module.b", &[3])], "HalfStorage");
    // The inner pickle without its PROTO and STOP, nested as a value.
    p.extend(&inner[2..inner.len() - 1]);
    p.extend(b"u.");
    // Make "module.w" a transposed view: its stride tuple (2, 1) becomes (1, 2).
    let at = p.windows(6).position(|w| w == b"(K\x02K\x01t").unwrap();
    p[at + 2] = 1;
    p[at + 4] = 2;
    let w: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
    let b: Vec<u8> = [0.5f32, -0.5, 1.5].iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
    let path = tmp("wrapped.pth");
    archive(&path, "x", &p, &[&w, &b]);
    let st = pth::open(&path).unwrap();
    assert_eq!(st.names().collect::<Vec<_>>(), ["b", "w"]);
    // Storage [1, 2, 3, 4] read with strides (1, 2): rows [1, 3], [2, 4].
    assert_eq!(st.f32("w", &[2, 2]).unwrap(), [1.0, 3.0, 2.0, 4.0]);
    assert_eq!(st.f32("b", &[3]).unwrap(), [0.5, -0.5, 1.5]);
}

#[test]
fn foreign_globals_are_refused_by_name_never_run() {
    let cases: &[(&[u8], &str)] = &[
        // The classic: os.system("touch pwned") through REDUCE.
        (b"\x80\x02cos\nsystem\nX\x0b\x00\x00\x00touch pwned\x85R.", "refused global os.system"),
        (b"\x80\x02cposix\nsystem\nX\x02\x00\x00\x00id\x85R.", "refused global posix.system"),
        // Protocol 4's STACK_GLOBAL spelling.
        (b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93X\x01\x00\x00\x001\x85R.", "refused global builtins.eval"),
        // A whole pickled model (torch.save(model)): its class.
        (
            b"\x80\x02cbasicsr.archs.rrdbnet_arch\nRRDBNet\nq\x00)\x81q\x01}b.",
            "refused global basicsr.archs.rrdbnet_arch.RRDBNet",
        ),
        // A custom class in a state dict's place.
        (b"\x80\x02c__main__\nEvil\n)R.", "refused global __main__.Evil"),
        // torch functions other than the tensor rebuilders.
        (b"\x80\x02ctorch\nload\n.", "refused global torch.load"),
        // Old-protocol opcodes that build or call objects.
        (b"(cos\nsystem\nS'id'\no.", "refused global os.system"),
        (b"\x80\x02(X\x02\x00\x00\x00idios\nsystem\n.", "INST"),
        (b"\x80\x02}q\x00(X\x01\x00\x00\x00a]\x81u.", "NEWOBJ"),
    ];
    let marker = tmp("pwned");
    for (i, (pickle, want)) in cases.iter().enumerate() {
        let p = tmp(&format!("evil{i}.pth"));
        archive(&p, "archive", pickle, &[]);
        let e = refused(&p);
        assert!(e.contains(want), "case {i}: {e}");
        assert!(e.contains("data.pkl"), "case {i} does not name the pickle: {e}");
    }
    assert!(!marker.exists() && !Path::new("pwned").exists());
}

#[test]
fn lying_storages_views_and_sizes_are_refused() {
    let good = state_dict_pickle(&[("w", &[2, 3])], "FloatStorage");
    let data = f32_bytes(&[1.0; 6]);
    // Storage holds fewer bytes than the pickle claims.
    let p = tmp("short-storage.pth");
    archive(&p, "archive", &good, &[&data[..20]]);
    let e = refused(&p);
    assert!(e.contains("tensor \"w\"") && e.contains("claims 6 elements (24 bytes) but holds 20 bytes"), "{e}");
    // The storage entry is missing.
    let p = tmp("no-storage.pth");
    archive(&p, "archive", &good, &[]);
    let e = refused(&p);
    assert!(e.contains("no entry \"archive/data/0\""), "{e}");
    // A view reaching past its storage (offset 1 into 6 elements for a 2x3 tensor).
    let mut off = good.clone();
    let at = off.windows(4).position(|w| w == b"tQK\x00").unwrap();
    off[at + 3] = 1;
    let p = tmp("past-end.pth");
    archive(&p, "archive", &off, &[&data]);
    let e = refused(&p);
    assert!(e.contains("reaches past its storage of 6 elements"), "{e}");
    // Absurd sizes: 2^40 x 2^40 elements over a 6-element storage with zero strides.
    let huge = b"\x80\x02}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQK\x00(\x8a\x06\x00\x00\x00\x00\x00\x01\x8a\x06\x00\x00\x00\x00\x00\x01t(K\x00K\x00t\x89}tRu.";
    let p = tmp("huge.pth");
    archive(&p, "archive", huge, &[&data]);
    let e = refused(&p);
    assert!(e.contains("overflows") || e.contains("more memory"), "{e}");
    // Many broadcast views of one storage: capped by the file's size, not allocated.
    let mut pk = b"\x80\x02}(".to_vec();
    for i in 0..64 {
        pk.extend(format!("X\x03\x00\x00\x00w{i:02}").as_bytes());
        pk.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQK\x00(J\x00\x00\x10\x00t(K\x00t\x89}tR");
    }
    pk.extend(b"u.");
    let p = tmp("broadcast.pth");
    archive(&p, "archive", &pk, &[&data]);
    let e = refused(&p);
    assert!(e.contains("more memory than a file of"), "{e}");
}

#[test]
fn truncated_corrupt_and_foreign_files_are_refused() {
    let p = tmp("full.pth");
    pth::write(&p, "m", &[("a", &[4, 4], &[0.5; 16]), ("b", &[3], &[1.0, 2.0, 3.0])]).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let q = tmp("cut.pth");
    for cut in (0..bytes.len()).step_by(7) {
        std::fs::write(&q, &bytes[..cut]).unwrap();
        let e = refused(&q);
        assert!(
            e.contains("truncated") || e.contains("too short") || e.contains("not a PyTorch zip"),
            "cut at {cut}: {e}"
        );
    }
    // A flipped byte inside the pickle: the CRC catches it.
    let mut bad = bytes.clone();
    let at = bad.windows(6).position(|w| w == b"ctorch").unwrap();
    bad[at + 1] = b'X';
    std::fs::write(&q, &bad).unwrap();
    assert!(refused(&q).contains("corrupt (CRC-32"));
    // A compressed (deflated) entry: torch.save never writes one.
    let mut deflated = bytes.clone();
    let cd = deflated.windows(4).position(|w| w == b"PK\x01\x02").unwrap();
    deflated[cd + 10] = 8;
    std::fs::write(&q, &deflated).unwrap();
    assert!(refused(&q).contains("is compressed (method 8)"));
    // Not a zip; a legacy (pre-1.6) torch.save file; a zip without data.pkl; a dict of numbers.
    std::fs::write(&q, b"hello world, not a model").unwrap();
    assert!(refused(&q).contains("not a PyTorch zip archive"));
    std::fs::write(&q, b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.").unwrap();
    assert!(refused(&q).contains("legacy (pre-1.6) torch.save"));
    std::fs::write(&q, write_stored(&[("m/weights.bin", b"1234")])).unwrap();
    assert!(refused(&q).contains("no <folder>/data.pkl"));
    archive(&q, "m", b"\x80\x02}(X\x05\x00\x00\x00epochK\x03u.", &[]);
    let e = refused(&q);
    assert!(e.contains("no tensors at the top level") && e.contains("[\"epoch\"]"), "{e}");
    archive(&q, "m", b"\x80\x02}(X\x06\x00\x00\x00params}(X\x05\x00\x00\x00epochK\x03uu.", &[]);
    assert!(refused(&q).contains("the state dict holds no tensors"));
    archive(&q, "m", b"\x80\x02]q\x00.", &[]);
    assert!(refused(&q).contains("not a dict of tensors"));
}

#[test]
fn a_key_set_twice_is_refused_not_guessed() {
    let p = tmp("twice.pth");
    let pickle = state_dict_pickle(&[("w", &[2]), ("w", &[2])], "FloatStorage");
    let (a, b) = (f32_bytes(&[1.0, 2.0]), f32_bytes(&[3.0, 4.0]));
    archive(&p, "archive", &pickle, &[&a, &b]);
    let e = refused(&p);
    assert!(e.contains("tensor \"w\"") && e.contains("appears twice"), "{e}");
}

#[test]
fn random_corruption_never_panics() {
    let p = tmp("fuzz-src.pth");
    pth::write(&p, "f", &[("x", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), ("y", &[2], &[0.5, 0.25])]).unwrap();
    let good = std::fs::read(&p).unwrap();
    let q = tmp("fuzz.pth");
    let mut s = 0x5EED_1234u64;
    for _ in 0..1500 {
        let mut b = good.clone();
        for _ in 0..2 {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let i = (s as usize) % b.len();
            b[i] = (s >> 24) as u8;
        }
        std::fs::write(&q, &b).unwrap();
        if let Ok(st) = pth::open(&q) {
            for name in st.names().map(str::to_string).collect::<Vec<_>>() {
                let _ = st.f32_any(&name);
            }
        }
    }
}
