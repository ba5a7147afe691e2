//! Every `SDGRAPH_*` environment variable, read once when the command starts
//! and passed down as values: library code reads no environment.

use std::ffi::OsString;
use std::path::PathBuf;

use ::gpu::tensor_cores::TensorCoreFault;
use ::gpu::{DType, GpuOptions};

/// The variable naming plugin folders, separated like `PATH`.
pub const PLUGIN_PATH_VAR: &str = "SDGRAPH_PLUGIN_PATH";
/// The variable naming ComfyUI-style models folders, separated like `PATH`.
pub const MODELS_DIR_VAR: &str = "SDGRAPH_MODELS_DIR";

/// What the environment says, checked.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `SDGRAPH_ADAPTER`: the adapter when `--adapter` names none.
    pub adapter: Option<String>,
    /// `SDGRAPH_TENSOR_CORES=0`: the portable kernels even where tensor cores exist.
    pub no_tensor_cores: bool,
    /// `SDGRAPH_TEST_TENSOR_CORE_FAULT=corrupt|correct`, for tests only: corrupt the tensor-core
    /// results (or let the portable kernel stand in for them where there are none), so the
    /// self-test's failure and fallback can be tested on any adapter.
    pub tensor_core_fault: TensorCoreFault,
    /// `SDGRAPH_PLUGIN_PATH`: plugin folders loaded before `--plugins`.
    pub plugin_dirs: Vec<PathBuf>,
    /// `SDGRAPH_MODELS_DIR`: ComfyUI-style models folders (separated like `PATH`) searched after `--models-dir`.
    pub models_dirs: Vec<PathBuf>,
    /// `SDGRAPH_EXTRA_MODEL_PATHS`: ComfyUI `extra_model_paths.yaml` files (separated like `PATH`).
    pub extra_model_paths: Vec<PathBuf>,
    /// `HOME` (`USERPROFILE` on Windows): what `~` means in those files.
    pub home: Option<PathBuf>,
    /// The file-hash cache: `$SDGRAPH_CACHE_DIR/file-hashes.json`, else
    /// `$XDG_CACHE_HOME/sdgraph/...`, else `~/.cache/sdgraph/...`
    /// (`%LOCALAPPDATA%\sdgraph\...` on Windows); `None` when no home is known.
    pub hash_cache_file: Option<PathBuf>,
    /// The tensor-core self-test's verdicts: `tensor-core-check.json` in the same folder.
    pub tensor_core_check_file: Option<PathBuf>,
    /// `SDGRAPH_AUTH_TOKEN`: the token `sdgraph serve` requires when `--auth-token` gives none.
    pub auth_token: Option<String>,
    /// `SDGRAPH_DTYPE`, `SDGRAPH_VAE_TILE_BYTES`, `SDGRAPH_UPSCALE_TILE_BYTES`, `SDGRAPH_ABSOLUTE_PATHS`.
    pub nodes: nodes::Settings,
    /// What the batch scheduler says about the shard `sdgraph sweep` runs.
    pub sweep: SweepEnv,
}

/// The shard a scheduler gave this process, for `sdgraph sweep` (each `None` when unset).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SweepEnv {
    /// `JOB_COMPLETION_INDEX`: a Kubernetes Indexed Job's index.
    pub k8s_index: Option<u64>,
    /// `SDGRAPH_SWEEP_SHARDS`: the shard count where the scheduler gives only an index (Kubernetes).
    pub shards: Option<u64>,
    /// `SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_COUNT`, `SLURM_ARRAY_TASK_MIN`, `SLURM_ARRAY_TASK_STEP`.
    pub slurm_id: Option<u64>,
    pub slurm_count: Option<u64>,
    pub slurm_min: Option<u64>,
    pub slurm_step: Option<u64>,
    /// `SDGRAPH_TEST_SWEEP_STALL_MS`, for tests only: wait this long before putting each rendered row in place,
    /// so a test can kill the process in that window.
    pub test_stall_ms: Option<u64>,
}

impl Settings {
    /// Reads the process environment; a malformed value is an error naming the variable.
    pub fn from_env() -> Result<Settings, String> {
        Self::from_vars(|name| std::env::var_os(name))
    }

    /// Reads the variables through `var` (the environment, or a test's table).
    pub fn from_vars(var: impl Fn(&str) -> Option<OsString>) -> Result<Settings, String> {
        let text = |name: &str| -> Result<Option<String>, String> {
            match var(name).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => v.into_string().map(Some).map_err(|v| format!("{name}={v:?} is not valid UTF-8")),
            }
        };
        let bytes = |name: &str| -> Result<Option<u64>, String> {
            match text(name)? {
                None => Ok(None),
                Some(s) => match s.trim().parse::<u64>() {
                    Ok(v) if v > 0 => Ok(Some(v)),
                    _ => Err(format!("{name}={s:?} is not a positive number of bytes")),
                },
            }
        };
        let count = |name: &str| -> Result<Option<u64>, String> {
            match text(name)? {
                None => Ok(None),
                Some(s) => s.trim().parse::<u64>().map(Some).map_err(|_| format!("{name}={s:?} is not a whole number")),
            }
        };
        let sweep = SweepEnv {
            k8s_index: count("JOB_COMPLETION_INDEX")?,
            shards: count("SDGRAPH_SWEEP_SHARDS")?,
            slurm_id: count("SLURM_ARRAY_TASK_ID")?,
            slurm_count: count("SLURM_ARRAY_TASK_COUNT")?,
            slurm_min: count("SLURM_ARRAY_TASK_MIN")?,
            slurm_step: count("SLURM_ARRAY_TASK_STEP")?,
            test_stall_ms: count("SDGRAPH_TEST_SWEEP_STALL_MS")?,
        };
        let dtype = match text("SDGRAPH_DTYPE")? {
            None => None,
            Some(v) => Some(DType::from_setting(&v).map_err(|e| format!("SDGRAPH_DTYPE={e}"))?),
        };
        // Checked for UTF-8 first; then read the one way the test harness reads them too.
        text("SDGRAPH_ADAPTER")?;
        text("SDGRAPH_TENSOR_CORES")?;
        if let Some(v) = text("SDGRAPH_TEST_TENSOR_CORE_FAULT")? {
            TensorCoreFault::from_setting(&v).map_err(|e| format!("SDGRAPH_TEST_TENSOR_CORE_FAULT={e}"))?;
        }
        let gpu = GpuOptions::from_settings(|name| text(name).ok().flatten());
        let nonempty_path = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let path_list = |name: &str| -> Vec<PathBuf> {
            var(name)
                .filter(|v| !v.is_empty())
                .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
                .unwrap_or_default()
        };
        let cache_dir = nonempty_path("SDGRAPH_CACHE_DIR").or_else(|| {
            let base = nonempty_path("XDG_CACHE_HOME").filter(|p| p.is_absolute()).or_else(|| {
                if cfg!(windows) {
                    nonempty_path("LOCALAPPDATA")
                } else {
                    nonempty_path("HOME").map(|h| h.join(".cache"))
                }
            });
            base.map(|b| b.join("sdgraph"))
        });
        Ok(Settings {
            adapter: gpu.adapter,
            no_tensor_cores: gpu.no_tensor_cores,
            tensor_core_fault: gpu.tensor_core_fault,
            plugin_dirs: var(PLUGIN_PATH_VAR).map(|v| plugin::plugin_dirs_from(&v)).unwrap_or_default(),
            models_dirs: path_list(MODELS_DIR_VAR),
            extra_model_paths: path_list("SDGRAPH_EXTRA_MODEL_PATHS"),
            home: nonempty_path(if cfg!(windows) { "USERPROFILE" } else { "HOME" }),
            auth_token: text("SDGRAPH_AUTH_TOKEN")?,
            hash_cache_file: cache_dir.as_ref().map(|d| d.join("file-hashes.json")),
            tensor_core_check_file: cache_dir.map(|d| d.join("tensor-core-check.json")),
            nodes: nodes::Settings {
                dtype,
                vae_tile_bytes: bytes("SDGRAPH_VAE_TILE_BYTES")?,
                upscale_tile_bytes: bytes("SDGRAPH_UPSCALE_TILE_BYTES")?,
                absolute_paths: match text("SDGRAPH_ABSOLUTE_PATHS")?.as_deref().map(str::trim) {
                    None | Some("" | "0") => false,
                    Some("1") => true,
                    Some(v) => return Err(format!("SDGRAPH_ABSOLUTE_PATHS={v:?}: expected 1 (or 0)")),
                },
                // Resolved from the command line and the models folders by `main`.
                embedding_dirs: &[],
            },
            sweep,
        })
    }

    /// The options the shared GPU opens with: `--adapter` wins over `SDGRAPH_ADAPTER`.
    pub fn gpu_options(&self, adapter: Option<String>, profile: bool) -> ::gpu::GpuOptions {
        ::gpu::GpuOptions {
            adapter: adapter.or_else(|| self.adapter.clone()),
            no_tensor_cores: self.no_tensor_cores,
            tensor_core_cache: self.tensor_core_check_file.clone(),
            tensor_core_fault: self.tensor_core_fault,
            profile,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Settings, String> {
        Settings::from_vars(|name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| OsString::from(v)))
    }

    #[test]
    fn settings_read_every_variable() {
        let s = from(&[
            ("SDGRAPH_ADAPTER", "llvmpipe"),
            ("SDGRAPH_TENSOR_CORES", "0"),
            ("SDGRAPH_DTYPE", "f16"),
            ("SDGRAPH_VAE_TILE_BYTES", "4096"),
            ("SDGRAPH_UPSCALE_TILE_BYTES", " 8192 "),
            ("SDGRAPH_CACHE_DIR", "/tmp/c"),
            ("SDGRAPH_ABSOLUTE_PATHS", "1"),
            ("SDGRAPH_TEST_TENSOR_CORE_FAULT", "corrupt"),
            ("JOB_COMPLETION_INDEX", "3"),
            ("SDGRAPH_SWEEP_SHARDS", "8"),
            ("SLURM_ARRAY_TASK_ID", "12"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
            ("SLURM_ARRAY_TASK_MIN", "10"),
        ])
        .unwrap();
        assert_eq!((s.sweep.k8s_index, s.sweep.shards), (Some(3), Some(8)));
        assert_eq!((s.sweep.slurm_id, s.sweep.slurm_count, s.sweep.slurm_min), (Some(12), Some(4), Some(10)));
        assert_eq!(s.adapter.as_deref(), Some("llvmpipe"));
        assert!(s.no_tensor_cores);
        assert_eq!(
            s.nodes,
            nodes::Settings {
                dtype: Some(DType::F16),
                vae_tile_bytes: Some(4096),
                upscale_tile_bytes: Some(8192),
                absolute_paths: true,
                embedding_dirs: &[],
            }
        );
        assert!(from(&[("SDGRAPH_ABSOLUTE_PATHS", "yes")]).unwrap_err().contains("SDGRAPH_ABSOLUTE_PATHS"));
        assert_eq!(s.hash_cache_file, Some(PathBuf::from("/tmp/c/file-hashes.json")));
        assert_eq!(s.tensor_core_check_file, Some(PathBuf::from("/tmp/c/tensor-core-check.json")));
        assert_eq!(s.tensor_core_fault, TensorCoreFault::Corrupt);
        let opts = s.gpu_options(None, false);
        assert_eq!(opts.tensor_core_cache, s.tensor_core_check_file);
        assert_eq!(opts.tensor_core_fault, TensorCoreFault::Corrupt);
        let none = from(&[]).unwrap();
        assert_eq!(none.nodes, nodes::Settings::default());
        assert!(!none.no_tensor_cores && none.adapter.is_none() && none.hash_cache_file.is_none());
        assert!(none.tensor_core_check_file.is_none() && none.tensor_core_fault == TensorCoreFault::None);
    }

    #[test]
    fn settings_fall_back_to_xdg_then_home_for_the_hash_cache() {
        let xdg = from(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]).unwrap();
        assert_eq!(xdg.hash_cache_file, Some(PathBuf::from("/x/sdgraph/file-hashes.json")));
        if !cfg!(windows) {
            let home = from(&[("XDG_CACHE_HOME", "relative"), ("HOME", "/h")]).unwrap();
            assert_eq!(home.hash_cache_file, Some(PathBuf::from("/h/.cache/sdgraph/file-hashes.json")));
        }
    }

    #[test]
    fn malformed_settings_are_errors_naming_the_variable() {
        for (k, v) in [
            ("SDGRAPH_VAE_TILE_BYTES", "x"),
            ("SDGRAPH_VAE_TILE_BYTES", "0"),
            ("SDGRAPH_UPSCALE_TILE_BYTES", "-1"),
            ("SDGRAPH_DTYPE", "bf16"),
            ("SDGRAPH_TEST_TENSOR_CORE_FAULT", "sometimes"),
            ("JOB_COMPLETION_INDEX", "-1"),
            ("SLURM_ARRAY_TASK_COUNT", "four"),
        ] {
            let e = from(&[(k, v)]).unwrap_err();
            assert!(e.contains(k) && e.contains(v), "{e}");
        }
    }
}
