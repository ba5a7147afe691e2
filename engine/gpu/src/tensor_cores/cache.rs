//! The verdict cache: one small JSON file (`tensor-core-check.json` in sdgraph's cache folder)
//! with the last verdict per adapter and driver, kernel, shader source and test mode, so a
//! process on a known setup reads its verdicts instead of testing. A driver update or a changed
//! kernel gives another key, hence a new test. Nothing here is an error: a missing file is
//! empty, an unreadable one is ignored (with a warning) and rewritten, a failed write warns.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{CoopKernel, Verdict};
use crate::shaders::{ShaderFamily, Variant, shader};

/// What tells one adapter and driver from another: a verdict holds for these only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AdapterIdentity {
    pub name: String,
    pub vendor: u32,
    pub device: u32,
    pub backend: String,
    pub driver: String,
    pub driver_info: String,
}

impl AdapterIdentity {
    pub(crate) fn of(info: &wgpu::AdapterInfo) -> Self {
        Self {
            name: info.name.clone(),
            vendor: info.vendor,
            device: info.device,
            backend: format!("{:?}", info.backend),
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
        }
    }
}

/// One cached verdict and its key (every field but `verdict` and `detail`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Entry {
    pub adapter: AdapterIdentity,
    pub kernel: String,
    /// See [`shader_hash`].
    pub shader_hash: String,
    /// The test switch's mode: a verdict of a corrupted or stand-in run never stands for the real one.
    pub mode: String,
    pub stand_in: bool,
    pub verdict: Verdict,
    pub detail: Option<String>,
}

impl Entry {
    pub(super) fn same_key(&self, other: &Entry) -> bool {
        self.adapter == other.adapter
            && self.kernel == other.kernel
            && self.shader_hash == other.shader_hash
            && self.mode == other.mode
            && self.stand_in == other.stand_in
    }
}

/// The file's layout; another `version` is read as empty (and replaced on the next write).
#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    entries: Vec<Entry>,
}

const VERSION: u32 = 1;

/// Entries kept at most: old drivers' verdicts are dropped first, so the file stays small.
const MAX_ENTRIES: usize = 64;

/// Bumped when the self-test's problems or tolerance change, so every verdict is taken again.
const SELF_TEST_VERSION: &str = "tensor-core self-test 1";

/// The entries in `path`: none when it is missing, none (with a warning) when it cannot be read.
pub(super) fn load(path: &Path) -> Vec<Entry> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            log::warn!("cannot read the tensor-core verdict cache {}: {e}; testing again", path.display());
            return Vec::new();
        }
    };
    match serde_json::from_slice::<CacheFile>(&text) {
        Ok(f) if f.version == VERSION => f.entries,
        Ok(_) => Vec::new(),
        Err(e) => {
            log::warn!("ignoring the unreadable tensor-core verdict cache {}: {e}; testing again", path.display());
            Vec::new()
        }
    }
}

/// Puts `new` into the file in place of entries with the same key, keeping the others (other
/// adapters and drivers). Written to a temporary file and renamed, so a reader never sees half a
/// file; a failure only warns (the next process tests again).
pub(super) fn store(path: &Path, new: &[Entry]) {
    let mut entries = load(path);
    entries.retain(|e| !new.iter().any(|n| n.same_key(e)));
    entries.extend(new.iter().cloned());
    let excess = entries.len().saturating_sub(MAX_ENTRIES);
    entries.drain(..excess);
    let file = CacheFile { version: VERSION, entries };
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    let written = (|| {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_vec_pretty(&file).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        log::warn!("cannot write the tensor-core verdict cache {}: {e}; the next run tests again", path.display());
    }
}

/// A hash of what a verdict depends on besides the adapter: the coop kernel's WGSL, the portable
/// kernel's it is compared with, and the self-test's version. FNV-1a, fixed across builds and
/// platforms (std's hasher is not), in hex.
pub(super) fn shader_hash(kernel: CoopKernel) -> String {
    let (coop, portable) = match kernel {
        CoopKernel::Matmul => (ShaderFamily::MatmulCoop, ShaderFamily::Matmul),
        CoopKernel::Conv2d => (ShaderFamily::MatmulCoop, ShaderFamily::Conv2d),
        CoopKernel::Attention => (ShaderFamily::AttentionCoop, ShaderFamily::Attention),
    };
    let mut h = Fnv1a::default();
    h.write(SELF_TEST_VERSION.as_bytes());
    h.write(kernel.name().as_bytes());
    h.write(shader(coop).source(Variant::CoopF16).as_bytes());
    h.write(shader(portable).source(Variant::F16).as_bytes());
    format!("{:016x}", h.0)
}

/// 64-bit FNV-1a.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        self.0 = (self.0 ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kernel: &str, verdict: Verdict) -> Entry {
        Entry {
            adapter: AdapterIdentity {
                name: "gpu".into(),
                vendor: 1,
                device: 2,
                backend: "Vulkan".into(),
                driver: "d".into(),
                driver_info: "1.0".into(),
            },
            kernel: kernel.into(),
            shader_hash: "h".into(),
            mode: "real".into(),
            stand_in: false,
            verdict,
            detail: None,
        }
    }

    #[test]
    fn store_replaces_the_same_key_and_keeps_others() {
        let dir = std::env::temp_dir().join(format!("sdgraph-tc-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/tensor-core-check.json");
        assert!(load(&path).is_empty());
        let mut other_driver = entry("matmul_coop", Verdict::Passed);
        other_driver.adapter.driver_info = "2.0".into();
        store(&path, &[entry("matmul_coop", Verdict::Passed), other_driver.clone()]);
        store(&path, &[entry("matmul_coop", Verdict::Failed)]);
        let got = load(&path);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got.contains(&other_driver));
        assert!(got.contains(&entry("matmul_coop", Verdict::Failed)));
        std::fs::write(&path, "{ not json").unwrap();
        assert!(load(&path).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_file_keeps_at_most_max_entries_dropping_the_oldest() {
        let dir = std::env::temp_dir().join(format!("sdgraph-tc-cap-{}", std::process::id()));
        let path = dir.join("tensor-core-check.json");
        let many: Vec<Entry> = (0..MAX_ENTRIES + 5).map(|i| entry(&format!("k{i}"), Verdict::Passed)).collect();
        store(&path, &many);
        let got = load(&path);
        assert_eq!(got.len(), MAX_ENTRIES);
        assert_eq!(got[0].kernel, "k5");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn shader_hashes_differ_per_kernel_and_are_stable() {
        let h: Vec<String> = CoopKernel::ALL.iter().map(|&k| shader_hash(k)).collect();
        assert!(h[0] != h[1] && h[1] != h[2] && h[0] != h[2], "{h:?}");
        assert_eq!(shader_hash(CoopKernel::Matmul), h[0]);
        let mut a = Fnv1a::default();
        a.write(b"ab");
        a.write(b"c");
        let mut b = Fnv1a::default();
        b.write(b"a");
        b.write(b"bc");
        assert_ne!(a.0, b.0);
    }
}
