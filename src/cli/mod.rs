//! Command-line interface: `run`, `check`, `nodes`, `dot`.

mod bench;
mod dot;
mod gpu;
mod import;
mod interrupt;
mod list_nodes;
mod load;
mod logger;
mod progress;
mod run;
mod serve;
mod settings;
mod sweep;
mod verify;
mod watch;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Exit code for a graph or command line that is wrong.
pub const EXIT_INVALID: i32 = 2;
/// Exit code for a valid graph that failed while running.
pub const EXIT_FAILED: i32 = 1;
/// Exit code after Ctrl-C, as shells report SIGINT.
pub const EXIT_INTERRUPTED: i32 = 130;

#[derive(Parser)]
#[command(name = "sdgraph", version, about = "Stable Diffusion pipelines as RON node graphs")]
struct Cli {
    /// Load Lua plugin nodes from this folder or file (repeatable; also SDGRAPH_PLUGIN_PATH).
    #[arg(long, global = true, value_name = "DIR")]
    plugins: Vec<PathBuf>,
    /// A models folder laid out as ComfyUI's (checkpoints/, loras/, vae/, controlnet/, upscale_models/, input/),
    /// where a ComfyUI workflow's model and picture names are looked up (repeatable; also SDGRAPH_MODELS_DIR).
    #[arg(long, global = true, value_name = "DIR")]
    models_dir: Vec<PathBuf>,
    /// ComfyUI's extra_model_paths.yaml: more folders for model names (repeatable; also SDGRAPH_EXTRA_MODEL_PATHS).
    #[arg(long, global = true, value_name = "FILE")]
    extra_model_paths: Vec<PathBuf>,
    /// A folder of textual-inversion embeddings for `embedding:name` in prompts (repeatable), searched before each
    /// models folder's embeddings/ (and extra_model_paths.yaml's) and the graph's own embeddings/ folder.
    #[arg(long, global = true, value_name = "DIR")]
    embeddings_dir: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// The graph `run` and `watch` read, its overrides, and where they write.
#[derive(clap::Args)]
struct GraphTarget {
    /// The graph (.ron) or a PNG with an embedded graph.
    file: PathBuf,
    /// Override a param: node.param=value (repeatable).
    #[arg(long = "set", value_name = "NODE.PARAM=VALUE")]
    sets: Vec<String>,
    /// Folder for saved images.
    #[arg(long, default_value = "output")]
    out_dir: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run a graph file (or a PNG that sdgraph saved, to make it again).
    Run {
        #[command(flatten)]
        target: GraphTarget,
        /// Print a machine-readable run report on stdout (and no progress, unless --progress).
        #[arg(long)]
        json: bool,
        /// No progress on stderr.
        #[arg(long, short)]
        quiet: bool,
        /// Progress on stderr even with --json.
        #[arg(long, conflicts_with = "quiet")]
        progress: bool,
        /// Write each sampler's preview to DIR/preview_<node>.png every few steps (replaced in place).
        #[arg(long, value_name = "DIR")]
        preview: Option<PathBuf>,
        /// Sampler steps between previews (the last step always gets one).
        #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        preview_every: u64,
        /// GPU adapter by name or backend substring (default: SDGRAPH_ADAPTER, else the best GPU).
        #[arg(long)]
        adapter: Option<String>,
        /// Time every GPU kernel and print the top kernels by total time on stderr (in the report with --json).
        #[arg(long)]
        profile: bool,
    },
    /// Validate a graph without running it or touching model and input files.
    Check {
        file: PathBuf,
        #[arg(long = "set", value_name = "NODE.PARAM=VALUE")]
        sets: Vec<String>,
        /// Print the problems as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// For a PNG sdgraph saved: re-hash the model files it records and report any that changed (exit 2).
        #[arg(long)]
        verify: bool,
    },
    /// List node kinds, or show one kind's ports and params.
    Nodes {
        kind: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Run a graph, then again on every save of it or of a file it reads (cached results are reused).
    Watch {
        #[command(flatten)]
        target: GraphTarget,
        /// One JSON line per run on stdout: {"run", "ok", "executed", "cached", "errors", "outputs"}.
        #[arg(long)]
        json: bool,
        /// Quiet time after a change before re-running, in milliseconds.
        #[arg(long, default_value_t = 200)]
        debounce_ms: u64,
        /// Stop after this many runs.
        #[arg(long)]
        max_runs: Option<usize>,
    },
    /// Show the GPU adapter sdgraph uses, its features and limits.
    Gpu {
        /// Pick an adapter by name or backend substring (default: SDGRAPH_ADAPTER, else the best GPU).
        #[arg(long)]
        adapter: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks (`kernels`: matmul and conv TFLOP/s at SD 1.5 shapes; `models`: networks of a checkpoint).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Convert a ComfyUI workflow (API or UI JSON, or a PNG ComfyUI saved) into an sdgraph graph.
    Import {
        /// The workflow: .json as ComfyUI saves or queues it, or a ComfyUI PNG.
        file: PathBuf,
        /// Write the graph here (default: standard output).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Serve ComfyUI's HTTP and WebSocket API (POST /prompt, /queue, /history, /view, /ws, ...), so ComfyUI's
    /// clients and scripts drive sdgraph; the queue is journaled and survives restarts.
    Serve {
        /// Address and port to listen on; anything but loopback needs --auth-token (or --insecure).
        #[arg(long, default_value = "127.0.0.1:8188")]
        listen: String,
        /// Where SaveImage writes (ComfyUI's output folder).
        #[arg(long, default_value = "output")]
        output_dir: PathBuf,
        /// Where uploaded pictures go and LoadImage looks first (ComfyUI's input folder).
        #[arg(long, default_value = "input")]
        input_dir: PathBuf,
        /// Where the queue journal is kept.
        #[arg(long, default_value = ".sdgraph-serve")]
        state_dir: PathBuf,
        /// Token clients must send as `Authorization: Bearer <token>` (also SDGRAPH_AUTH_TOKEN).
        #[arg(long)]
        auth_token: Option<String>,
        /// Listen on a non-loopback address without a token, on purpose.
        #[arg(long)]
        insecure: bool,
        /// Sampler previews as binary WebSocket frames: `latent2rgb` (ComfyUI's cheap projection), or `none`
        /// (ComfyUI's default: clients that take every binary frame for a result picture expect none).
        #[arg(long, default_value = "none", value_parser = ["none", "latent2rgb"])]
        preview_method: String,
        /// GPU adapter by name or backend substring (default: SDGRAPH_ADAPTER, else the best GPU).
        #[arg(long)]
        adapter: Option<String>,
    },
    /// Render a graph once per row of a params file (CSV, JSONL, RON/JSON rows or a product of lists), each row's
    /// files in OUT/row-NNNNNN/, models loaded once; sharded by --shard I/N or the batch scheduler
    /// (JOB_COMPLETION_INDEX with SDGRAPH_SWEEP_SHARDS, SLURM_ARRAY_TASK_ID); reruns skip finished rows.
    Sweep {
        /// The graph (.ron, a ComfyUI workflow, or a PNG with an embedded graph).
        file: PathBuf,
        /// The rows: .csv (header of node.param columns), .jsonl, .json or .ron (see README).
        #[arg(long, value_name = "FILE")]
        params: PathBuf,
        /// Folder for the row folders and the manifests.
        #[arg(long, default_value = "output")]
        out_dir: PathBuf,
        /// This process's shard: rows r with r % N == I (default: from the scheduler's variables, else 0/1).
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
        /// The shard count where the scheduler gives only an index (Kubernetes; also SDGRAPH_SWEEP_SHARDS).
        #[arg(long, value_name = "N")]
        shards: Option<u64>,
        /// Render nothing: sum the manifests in --out-dir (done, failed with errors, missing); exit 0 when all done.
        #[arg(long)]
        status: bool,
        /// With --status: print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// No progress on stderr.
        #[arg(long, short)]
        quiet: bool,
        /// GPU adapter by name or backend substring (default: SDGRAPH_ADAPTER, else the best GPU).
        #[arg(long)]
        adapter: Option<String>,
    },
    /// Print the graph as Graphviz DOT (kinds on nodes, port types on edges).
    Dot {
        file: PathBuf,
        #[arg(long = "set", value_name = "NODE.PARAM=VALUE")]
        sets: Vec<String>,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Matmul and conv2d at SD 1.5 UNet shapes and 4096^3, on every kernel path the adapter has.
    Kernels {
        #[arg(long)]
        adapter: Option<String>,
        /// Tiny shapes, one repetition: a smoke test for CPU adapters.
        #[arg(long)]
        small: bool,
        #[arg(long)]
        json: bool,
    },
    /// Milliseconds per call of a checkpoint's text encoder, UNet and VAE on given inputs (and of a
    /// whole graph), writing their outputs for comparison with a reference (see bench/README.md).
    Models {
        /// Single-file checkpoint (.safetensors) or diffusers folder.
        #[arg(long)]
        checkpoint: PathBuf,
        /// safetensors with clip.input_ids, unet.bN.{sample,timestep,context}, vae.latent, vae.image (each optional).
        #[arg(long)]
        inputs: PathBuf,
        /// Where to write the outputs (safetensors, f32).
        #[arg(long)]
        out: PathBuf,
        /// A graph to time end to end: one first run, then timed runs with each KSampler's seed bumped.
        #[arg(long)]
        graph: Option<PathBuf>,
        /// Untimed calls before timing (pipeline compilation, buffer pool warm-up).
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Timed calls per network (the median is reported).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        runs: u64,
        /// Time every kernel of the timed calls and print the top kernels per network.
        #[arg(long)]
        profile: bool,
        #[arg(long)]
        adapter: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_INVALID } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    logger::install();
    let settings = match settings::Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    graph::exec::provenance::HashCache::configure_global(settings.hash_cache_file.clone());
    let mut plugin_dirs = settings.plugin_dirs.clone();
    plugin_dirs.extend(cli.plugins.iter().cloned());
    let extra_files: Vec<&PathBuf> = cli.extra_model_paths.iter().chain(&settings.extra_model_paths).collect();
    let models = match load::ModelPaths::new(
        cli.models_dir.iter().chain(&settings.models_dirs).cloned().collect(),
        &extra_files,
        settings.home.as_deref(),
    ) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    let mut settings = settings;
    settings.nodes.embedding_dirs = embedding_dirs(&cli.embeddings_dir, &models);
    let registry = match build_registry(&plugin_dirs, settings.nodes) {
        Ok(r) => r,
        Err(errs) => {
            for e in &errs {
                eprintln!("error: {e}");
            }
            return EXIT_INVALID;
        }
    };
    match cli.command {
        Command::Run { target, json, quiet, progress, preview, preview_every, adapter, profile } => {
            let GraphTarget { file, sets, out_dir } = target;
            ::gpu::device::configure_shared(settings.gpu_options(adapter, profile));
            let args = run::RunArgs {
                file,
                sets,
                out_dir,
                json,
                show_progress: progress || !(quiet || json),
                preview: preview.map(|dir| (dir, preview_every)),
                profile,
                models,
            };
            run::run(&registry, &args)
        }
        Command::Check { file, sets, json, verify } => run::check(&registry, &models, &file, &sets, json, verify),
        Command::Import { file, out } => import::import(&registry, &models, &file, out.as_deref()),
        Command::Nodes { kind, json } => list_nodes::nodes(&registry, kind.as_deref(), json),
        Command::Dot { file, sets } => dot::dot(&registry, &models, &file, &sets),
        Command::Serve { listen, output_dir, input_dir, state_dir, auth_token, insecure, preview_method, adapter } => {
            ::gpu::device::configure_shared(settings.gpu_options(adapter, false));
            let auth_token = auth_token.or_else(|| settings.auth_token.clone());
            let previews = preview_method == "latent2rgb";
            let args =
                serve::ServeArgs { listen, output_dir, input_dir, state_dir, auth_token, insecure, previews, models };
            serve::serve(registry, args)
        }
        Command::Sweep { file, params, out_dir, shard, shards, status, json, quiet, adapter } => {
            ::gpu::device::configure_shared(settings.gpu_options(adapter, false));
            let args = sweep::SweepArgs {
                graph: file,
                params,
                out_dir,
                shard,
                shards,
                status,
                json,
                quiet,
                env: settings.sweep.clone(),
                models,
            };
            sweep::sweep(&registry, &args)
        }
        Command::Gpu { adapter, json } => gpu::gpu(&settings.gpu_options(adapter, false), json),
        Command::Watch { target: GraphTarget { file, sets, out_dir }, json, debounce_ms, max_runs } => watch::watch(
            registry,
            watch::WatchArgs {
                plugin_dirs,
                node_settings: settings.nodes,
                file,
                sets,
                out_dir,
                json,
                debounce: std::time::Duration::from_millis(debounce_ms),
                max_runs,
                models,
            },
        ),
        Command::Bench { what: BenchWhat::Kernels { adapter, small, json } } => {
            bench::kernels(&settings.gpu_options(adapter, false), small, json)
        }
        Command::Bench {
            what: BenchWhat::Models { checkpoint, inputs, out, graph, warmup, runs, profile, adapter, json },
        } => bench::models(&bench::ModelsArgs {
            gpu: settings.gpu_options(adapter, profile),
            nodes: settings.nodes,
            checkpoint,
            inputs,
            out,
            graph,
            warmup,
            runs: runs as usize,
            json,
            models,
        }),
    }
}

/// The embeddings folders, in order: `--embeddings-dir`, then ComfyUI's `embeddings` folder of the models
/// folders and of `extra_model_paths.yaml` (in the order model names are looked up). Kept for the whole process.
fn embedding_dirs(flags: &[PathBuf], models: &load::ModelPaths) -> &'static [PathBuf] {
    let roots =
        graph::comfy::ModelRoots { roots: models.dirs.clone(), extra: models.extra.clone(), ..Default::default() };
    let mut dirs = flags.to_vec();
    let mut from_models = roots.folders("embeddings");
    // The last entry is the workflow's own folder, which CLIPTextEncode replaces by the graph's embeddings/.
    from_models.pop();
    dirs.extend(from_models);
    if dirs.is_empty() {
        return &[];
    }
    Box::leak(dirs.into_boxed_slice())
}

/// The built-in node kinds plus the plugins in `plugin_dirs`; any plugin
/// problem is an error (each message names its file).
pub(crate) fn build_registry(
    plugin_dirs: &[PathBuf],
    node_settings: nodes::Settings,
) -> Result<graph::Registry, Vec<plugin::PluginError>> {
    let mut registry = nodes::builtin_registry_with(node_settings);
    if !plugin_dirs.is_empty() {
        plugin::load_plugins(plugin_dirs, &mut registry, &plugin::SandboxLimits::default())?;
    }
    Ok(registry)
}
