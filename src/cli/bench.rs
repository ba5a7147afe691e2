//! `sdgraph bench kernels`: achieved TFLOP/s of matmul and conv at the
//! shapes of the SD 1.5 UNet at 512x512 (and 4096^3).
//! `sdgraph bench models`: milliseconds per call of the text encoder, UNet
//! and VAE of a checkpoint on given inputs (and of a whole graph), with
//! their outputs written for comparison (`bench/bench.py` drives it).

use std::path::{Path, PathBuf};
use std::time::Instant;

use gpu::bench::{BenchSize, bench_kernels};
use gpu::profile::ProfileReport;
use gpu::{DType, Gpu, GpuOptions, Tensor};
use graph::exec::{Executor, NoProgress, RunOptions};
use models::checkpoint::convert::open_checkpoint;
use models::checkpoint::safetensors::{Dtype, SafeTensors, write};
use models::clip::ClipLayer;
use nodes::checkpoint_loader::{LoadedCheckpoint, load_checkpoint};
use serde::Serialize;

use super::EXIT_FAILED;
use super::load::{ModelPaths, Sources, load};
use graph::comfy::MissingFiles;

pub fn kernels(opts: &GpuOptions, small: bool, json: bool) -> i32 {
    let gpu = match Gpu::new(opts) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    eprintln!("adapter: {} ({})", gpu.info.name, gpu.info.backend);
    let size = if small { BenchSize::Small } else { BenchSize::Full };
    let results = match bench_kernels(&gpu, size) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    if json {
        let v = serde_json::json!({ "adapter": gpu.info.name, "backend": gpu.info.backend, "results": results });
        println!("{v}");
    } else {
        println!("{:<30} {:<36} {:>10} {:>9}", "kernel", "shape", "ms", "TFLOP/s");
        for r in results {
            println!("{:<30} {:<36} {:>10.3} {:>9.3}", r.name, r.shape, r.ms, r.tflops);
        }
    }
    0
}

// ---------------------------------------------------------------------------
// `sdgraph bench models`
// ---------------------------------------------------------------------------

/// What `sdgraph bench models` was asked to do.
pub struct ModelsArgs {
    /// The shared GPU's options (`--adapter`, `--profile`, the environment's).
    pub gpu: GpuOptions,
    /// What the command read for the node kinds (`SDGRAPH_DTYPE`, ...).
    pub nodes: nodes::Settings,
    pub checkpoint: PathBuf,
    pub inputs: PathBuf,
    pub out: PathBuf,
    /// A txt2img graph to time end to end (its KSampler seeds are bumped per timed run).
    pub graph: Option<PathBuf>,
    pub warmup: usize,
    pub runs: usize,
    pub json: bool,
    /// Where a ComfyUI workflow's model names are looked up.
    pub models: ModelPaths,
}

/// One timed network or graph.
#[derive(Debug, Clone, Serialize)]
struct OpResult {
    name: String,
    /// Median milliseconds per call over the timed runs (each ends with a queue wait).
    ms: f64,
    min_ms: f64,
    runs: usize,
    /// Median CPU milliseconds spent recording one call (before its queue
    /// wait): the per-call overhead that no GPU speed can hide.
    #[serde(skip_serializing_if = "Option::is_none")]
    record_ms: Option<f64>,
    /// Kernel dispatches per call.
    kernels: u64,
    /// Pool bytes at the op's peak: weights plus activations (see engine/gpu/src/pool.rs).
    peak_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<ProfileReport>,
}

fn fail(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Times the networks of `checkpoint` on the tensors of `inputs` and writes
/// their outputs to `out` (see `bench/README.md` for the names). Sections
/// whose inputs are absent are skipped:
/// - `clip.input_ids` `[B, 77]` (ids as floats) -> `clip.last_hidden_state`
/// - `unet.bN.sample`, `unet.bN.timestep`, `unet.bN.context` -> `unet.bN.out` (N = 1, 2, ...)
/// - `vae.latent` -> `vae.decoded` (raw `decode`, no scaling factor)
/// - `vae.image` (in -1..1) -> `vae.encoded_mean` (the posterior's mean)
pub fn models(args: &ModelsArgs) -> i32 {
    match run_models(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILED
        }
    }
}

fn run_models(args: &ModelsArgs) -> Result<(), String> {
    // The graph section runs nodes, which use the shared GPU: open that one.
    gpu::device::configure_shared(args.gpu.clone());
    let gpu = gpu::device::shared().map_err(fail)?;
    let dtype = nodes::runtime::model_dtype(gpu, args.nodes.dtype);
    eprintln!("adapter: {} ({}), model dtype {dtype:?}", gpu.info.name, gpu.info.backend);
    if let Some(p) = gpu.profiler() {
        eprintln!("profiling: {}", p.clock().describe());
    }
    let inputs = SafeTensors::open(&args.inputs).map_err(fail)?;

    let t0 = Instant::now();
    let src = open_checkpoint(&args.checkpoint).map_err(fail)?;
    let ckpt = load_checkpoint(gpu, &src, dtype, |_| {}).map_err(|e| format!("{}: {e}", args.checkpoint.display()))?;
    gpu.sync().map_err(fail)?;
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    eprintln!("loaded {} in {load_ms:.0} ms", args.checkpoint.display());

    let timer = Timer { gpu, warmup: args.warmup, runs: args.runs.max(1) };
    let (mut results, outputs) = time_networks(&timer, &ckpt, &inputs, &args.inputs)?;
    drop(ckpt);
    gpu.release_idle_buffers();

    let mut graph_json = serde_json::Value::Null;
    if let Some(graph) = &args.graph {
        let (r, first) = time_graph(gpu, args, graph)?;
        graph_json = first;
        results.push(r);
    }

    let tensors: Vec<(&str, &[usize], &[f32])> =
        outputs.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())).collect();
    write(&args.out, &tensors, Dtype::F32).map_err(|e| format!("cannot write {}: {e}", args.out.display()))?;

    if args.json {
        let v = serde_json::json!({
            "adapter": gpu.info.name,
            "backend": gpu.info.backend,
            "device_type": gpu.info.device_type,
            "dtype": format!("{dtype:?}").to_lowercase(),
            "load_ms": load_ms,
            "warmup": args.warmup,
            "ops": results,
            "graph": graph_json,
            "out": args.out.display().to_string(),
        });
        println!("{v}");
    } else {
        print_results(&results);
    }
    Ok(())
}

/// A named output: name, shape, values.
type Output = (String, Vec<usize>, Vec<f32>);

/// Times each network the inputs file has inputs for, keeping each one's first output.
fn time_networks(
    timer: &Timer,
    ckpt: &LoadedCheckpoint,
    inputs: &SafeTensors,
    inputs_path: &Path,
) -> Result<(Vec<OpResult>, Vec<Output>), String> {
    let gpu = timer.gpu;
    let input = |name: &str| -> Result<Option<Tensor>, String> {
        if inputs.info(name).is_none() {
            return Ok(None);
        }
        let (shape, data) = inputs.f32_any(name).map_err(fail)?;
        gpu.upload(&data, &shape, DType::F32).map(Some).map_err(|e| format!("{}: {name}: {e}", inputs_path.display()))
    };
    let mut results = Vec::new();
    let mut outputs: Vec<Output> = Vec::new();
    let mut keep = |name: String, r: OpResult, out: Tensor| -> Result<(), String> {
        results.push(r);
        outputs.push((name, out.shape().to_vec(), gpu.download(&out).map_err(fail)?));
        Ok(())
    };
    if inputs.info("clip.input_ids").is_some() {
        let (shape, ids) = inputs.f32_any("clip.input_ids").map_err(fail)?;
        let rows = token_rows(&shape, &ids)?;
        let (r, out) =
            timer.time("text_encoder", || ckpt.clip.model.forward(gpu, &rows, ClipLayer::Last).map_err(fail))?;
        keep("clip.last_hidden_state".into(), r, out)?;
    }
    for n in 1.. {
        let p = format!("unet.b{n}.");
        let Some(sample) = input(&format!("{p}sample"))? else { break };
        let context = input(&format!("{p}context"))?.ok_or_else(|| format!("{p}context missing"))?;
        let (_, t) = inputs.f32_any(&format!("{p}timestep")).map_err(fail)?;
        let (r, out) =
            timer.time(&format!("unet_b{n}"), || ckpt.model.unet.forward(gpu, &sample, &t, &context).map_err(fail))?;
        keep(format!("{p}out"), r, out)?;
    }
    if let Some(z) = input("vae.latent")? {
        let (r, out) = timer.time("vae_decode", || ckpt.vae.vae.decode(gpu, &z).map_err(fail))?;
        keep("vae.decoded".into(), r, out)?;
    }
    if let Some(x) = input("vae.image")? {
        let (r, out) = timer.time("vae_encode", || Ok(ckpt.vae.vae.encode(gpu, &x).map_err(fail)?.mode().clone()))?;
        keep("vae.encoded_mean".into(), r, out)?;
    }
    Ok((results, outputs))
}

/// The timings as a table, then each profile.
fn print_results(results: &[OpResult]) {
    println!(
        "{:<14} {:>10} {:>10} {:>6} {:>8} {:>10} {:>12}",
        "op", "median ms", "min ms", "runs", "kernels", "record ms", "peak MiB"
    );
    for r in results {
        println!(
            "{:<14} {:>10.2} {:>10.2} {:>6} {:>8} {:>10} {:>12.1}",
            r.name,
            r.ms,
            r.min_ms,
            r.runs,
            r.kernels,
            r.record_ms.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into()),
            r.peak_bytes as f64 / (1u64 << 20) as f64
        );
    }
    for r in results {
        if let Some(p) = &r.profile {
            println!("\n{}:\n{}", r.name, p.render(15));
        }
    }
}

/// `[B, L]` float ids -> token rows, refusing values that are not ids.
fn token_rows(shape: &[usize], ids: &[f32]) -> Result<Vec<Vec<u32>>, String> {
    let [b, l] = shape else {
        return Err(format!("clip.input_ids: shape {shape:?}, expected [batch, tokens]"));
    };
    if *b == 0 || *l == 0 {
        return Err("clip.input_ids is empty".into());
    }
    if let Some(bad) = ids.iter().find(|v| !(v.fract() == 0.0 && **v >= 0.0 && **v < 16_777_216.0)) {
        return Err(format!("clip.input_ids: {bad} is not a token id"));
    }
    Ok(ids.chunks(*l).map(|row| row.iter().map(|&v| v as u32).collect()).collect())
}

struct Timer<'a> {
    gpu: &'a Gpu,
    warmup: usize,
    runs: usize,
}

impl Timer<'_> {
    /// Warm-up calls, then timed calls each ending with a queue wait; the
    /// output of the last call is returned.
    fn time(&self, name: &str, mut call: impl FnMut() -> Result<Tensor, String>) -> Result<(OpResult, Tensor), String> {
        let gpu = self.gpu;
        gpu.release_idle_buffers();
        gpu.reset_peak_bytes();
        for _ in 0..self.warmup {
            drop(call()?);
            gpu.sync().map_err(fail)?;
        }
        if let Some(p) = gpu.profiler() {
            p.reset();
        }
        let mut times = Vec::with_capacity(self.runs);
        let mut record = Vec::with_capacity(self.runs);
        let dispatches0 = gpu.dispatch_count();
        let mut last = None;
        for _ in 0..self.runs {
            // The previous output goes back to the pool before the next call, as in a sampling loop.
            drop(last.take());
            let t0 = Instant::now();
            let out = call()?;
            record.push(t0.elapsed().as_secs_f64() * 1e3);
            gpu.sync().map_err(fail)?;
            times.push(t0.elapsed().as_secs_f64() * 1e3);
            last = Some(out);
        }
        let profile = gpu.profile_report().map_err(fail)?;
        let out = last.ok_or("no timed run")?;
        let r = OpResult {
            name: name.to_string(),
            ms: median(&mut times),
            min_ms: times.iter().copied().fold(f64::INFINITY, f64::min),
            runs: self.runs,
            record_ms: Some(median(&mut record)),
            kernels: (gpu.dispatch_count() - dispatches0) / self.runs.max(1) as u64,
            peak_bytes: gpu.peak_bytes(),
            profile,
        };
        eprintln!(
            "{name}: {:.2} ms (median of {}); {} kernels, {:.2} ms of it recording on the CPU",
            r.ms,
            r.runs,
            r.kernels,
            r.record_ms.unwrap_or(0.0)
        );
        Ok((r, out))
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Runs `graph` once (model loading, pipeline compilation and the first
/// picture), `warmup` more times, then `runs` timed times with every
/// KSampler's seed bumped, so sampling, decoding and saving re-execute while
/// the loaded models and text encodings stay cached (as in `watch`).
/// Returns the timing and `{"first_run_ms", "outputs"}` of the first run.
fn time_graph(gpu: &Gpu, args: &ModelsArgs, file: &Path) -> Result<(OpResult, serde_json::Value), String> {
    let (out, warmup, runs) = (args.out.as_path(), args.warmup, args.runs.max(1));
    let registry = nodes::builtin_registry_with(args.nodes);
    let sources = Sources { registry: &registry, models: &args.models, missing: MissingFiles::Refuse };
    let base =
        load(file, &[], &sources).map_err(|e| e.0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))?;
    let samplers: Vec<(String, u64)> = base
        .graph
        .nodes
        .iter()
        .filter(|n| n.kind.value == "KSampler")
        .map(|n| {
            let seed = n.param("seed").and_then(|p| p.value.as_int()).and_then(|v| u64::try_from(v).ok());
            (n.id.value.clone(), seed.unwrap_or(0))
        })
        .collect();
    let out_dir = out.parent().map(|p| p.join("sdgraph_images")).unwrap_or_else(|| PathBuf::from("sdgraph_images"));
    let mut exec = Executor::default();
    let mut run_once = |bump: u64| -> Result<(f64, Vec<String>), String> {
        let sets: Vec<String> =
            samplers.iter().map(|(id, seed)| format!("{id}.seed={}", seed.wrapping_add(bump))).collect();
        let loaded = load(file, &sets, &sources)
            .map_err(|e| e.0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))?;
        let valid = graph::validate(loaded.graph, &registry)
            .map_err(|e| e.0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))?;
        let opts = RunOptions {
            base_dir: loaded.base_dir,
            out_dir: out_dir.clone(),
            graph_text: loaded.text,
            progress: &NoProgress,
            cancel: super::interrupt::cancel_flag(),
        };
        let t0 = Instant::now();
        let report = exec.run(&valid, &opts);
        gpu.sync().map_err(fail)?;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        if !report.ok {
            return Err(format!("{}: {}", file.display(), report.errors().join("; ")));
        }
        Ok((ms, report.outputs().iter().map(|p| p.display().to_string()).collect()))
    };
    gpu.reset_peak_bytes();
    let (first_ms, first_outputs) = run_once(0)?;
    eprintln!("graph: first run {first_ms:.0} ms (loading included)");
    for i in 0..warmup {
        run_once(1 + i as u64)?;
    }
    if let Some(p) = gpu.profiler() {
        p.reset();
    }
    let mut times = Vec::with_capacity(runs);
    let dispatches0 = gpu.dispatch_count();
    for i in 0..runs {
        times.push(run_once(1 + (warmup + i) as u64)?.0);
    }
    let profile = gpu.profile_report().map_err(fail)?;
    let r = OpResult {
        name: "txt2img".into(),
        ms: median(&mut times),
        min_ms: times.iter().copied().fold(f64::INFINITY, f64::min),
        runs,
        // The graph's recording overlaps its execution (samplers wait per step).
        record_ms: None,
        kernels: (gpu.dispatch_count() - dispatches0) / runs.max(1) as u64,
        peak_bytes: gpu.peak_bytes(),
        profile,
    };
    eprintln!("txt2img: {:.1} ms (median of {runs})", r.ms);
    Ok((r, serde_json::json!({ "first_run_ms": first_ms, "outputs": first_outputs })))
}
