//! Provenance: the SHA-256 of the model files a run used, cached by (path,
//! size, mtime) in memory and on disk, reported by `run --json`, embedded by
//! SaveImage in the `sdgraph-models` PNG chunk, and re-checked by
//! `sdgraph check picture.png --verify`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use graph::exec::provenance::{HashCache, sha256_bytes, sha256_file};
use graph::exec::{Executor, NodeStatus};
use graph::node::{NodeError, NodeInputs, NodeKind, NodeSchema, RunContext};
use graph::{Image, PortType, Registry, Value};
use nodes::png_meta;

/// Writes `bytes` to `path` with an mtime well in the past, so the hash
/// cache may keep its digest (fresh files are "racy" and never cached).
fn write_old(path: &Path, bytes: &[u8], age_secs: u64) {
    std::fs::write(path, bytes).unwrap();
    set_mtime(path, SystemTime::now() - Duration::from_secs(age_secs));
}

fn set_mtime(path: &Path, t: SystemTime) {
    std::fs::File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

fn leak(c: HashCache) -> &'static HashCache {
    Box::leak(Box::new(c))
}

#[test]
fn digests_are_cached_by_size_and_mtime_in_memory_and_on_disk() {
    let dir = crate::common::temp_dir("prov-cache");
    let cache_file = dir.join("cache/sdgraph/file-hashes.json");
    let model = dir.join("m.safetensors");
    write_old(&model, b"weights v1", 100);
    let v1 = sha256_bytes(b"weights v1");

    let a = leak(HashCache::new(Some(cache_file.clone())));
    assert_eq!(a.sha256(&model).unwrap(), v1);
    assert_eq!(a.files_hashed(), 1);
    assert!(cache_file.is_file(), "the digest is written to the disk cache");

    // Same size and mtime: the digest comes from the cache, the file is not read
    // (proved by changing the bytes behind its back).
    let t = mtime(&model);
    std::fs::write(&model, b"weights v2").unwrap();
    set_mtime(&model, t);
    assert_eq!(a.sha256(&model).unwrap(), v1);
    assert_eq!(a.files_hashed(), 1);

    // A new process (a fresh cache on the same file) reuses it too.
    let b = leak(HashCache::new(Some(cache_file.clone())));
    assert_eq!(b.sha256(&model).unwrap(), v1);
    assert_eq!(b.files_hashed(), 0);

    // A new mtime is a new version: hashed again, in both.
    set_mtime(&model, t - Duration::from_secs(10));
    let v2 = sha256_bytes(b"weights v2");
    assert_eq!(b.sha256(&model).unwrap(), v2);
    assert_eq!(b.files_hashed(), 1);
    let c = leak(HashCache::new(Some(cache_file.clone())));
    assert_eq!(c.sha256(&model).unwrap(), v2);
    assert_eq!(c.files_hashed(), 0, "the new digest replaced the old on disk");

    // A file written just now may change again within the same mtime tick: never cached.
    let fresh = dir.join("fresh.safetensors");
    std::fs::write(&fresh, b"new").unwrap();
    assert_eq!(c.sha256(&fresh).unwrap(), sha256_bytes(b"new"));
    assert_eq!(c.sha256(&fresh).unwrap(), sha256_bytes(b"new"));
    assert_eq!(c.files_hashed(), 2);

    assert!(c.sha256(&dir.join("missing")).unwrap_err().contains("missing"));
    assert!(c.sha256(&dir).unwrap_err().contains("not a file"));
}

#[test]
fn a_cache_that_cannot_be_written_or_read_is_not_an_error() {
    let dir = crate::common::temp_dir("prov-badcache");
    let model = dir.join("m.bin");
    write_old(&model, b"abc", 100);
    // The cache's folder is a file: writing fails, silently.
    std::fs::write(dir.join("blocker"), b"").unwrap();
    let c = leak(HashCache::new(Some(dir.join("blocker/file-hashes.json"))));
    assert_eq!(c.sha256(&model).unwrap(), sha256_bytes(b"abc"));
    // A corrupt cache file counts as empty and is replaced.
    let corrupt = dir.join("corrupt.json");
    std::fs::write(&corrupt, b"{ not json").unwrap();
    let c = leak(HashCache::new(Some(corrupt.clone())));
    assert_eq!(c.sha256(&model).unwrap(), sha256_bytes(b"abc"));
    assert!(std::fs::read_to_string(&corrupt).unwrap().contains(&sha256_bytes(b"abc")));
}

/// `Loader` (param `file`): records the file as read and outputs a 2x2 image.
struct Loader(NodeSchema);

impl NodeKind for Loader {
    fn schema(&self) -> &NodeSchema {
        &self.0
    }
    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        let path = ctx.resolve(inputs.str("file")?);
        ctx.record_input_file(&path);
        Ok(vec![Value::Image(Arc::new(Image::zeros(1, 2, 2, 3)))])
    }
    /// As CheckpointLoaderSimple: a replaced file re-runs the node.
    fn fingerprint(&self, ctx: &RunContext<'_>, inputs: &NodeInputs) -> Option<String> {
        let meta = std::fs::metadata(ctx.resolve(inputs.str("file").ok()?)).ok()?;
        Some(format!("{}:{:?}", meta.len(), meta.modified().ok()))
    }
}

fn registry() -> Registry {
    let mut reg = nodes::builtin_registry();
    let schema = NodeSchema::new("Loader", "test", "Records a file.").string("file", None, "The file.").output(
        "image",
        PortType::Image,
        "A picture.",
    );
    reg.register(Arc::new(Loader(schema))).unwrap();
    reg
}

fn embedded_models(png: &Path) -> BTreeMap<String, String> {
    png_meta::embedded_models(&std::fs::read(png).unwrap()).unwrap().expect("a sdgraph-models chunk")
}

#[test]
fn save_image_embeds_the_digests_of_the_files_upstream_of_it_and_the_report_lists_them() {
    let dir = crate::common::temp_dir("prov-embed");
    let (a, b) = (dir.join("a.safetensors"), dir.join("b.safetensors"));
    std::fs::write(&a, b"model a").unwrap();
    std::fs::write(&b, b"model b").unwrap();
    let text = format!(
        r#"(nodes: {{
            "la": (kind: "Loader", params: {{ "file": {a:?} }}),
            "lb": (kind: "Loader", params: {{ "file": {b:?} }}),
            "mix": (kind: "ImageBlend", inputs: {{ "image1": "la.image", "image2": "lb.image" }}),
            "save_a": (kind: "SaveImage", inputs: {{ "images": "la.image" }}, params: {{ "filename_prefix": "a_RUN" }}),
            "save_ab": (kind: "SaveImage", inputs: {{ "images": "mix.image" }}, params: {{ "filename_prefix": "ab_RUN" }}),
        }})"#
    );
    let reg = registry();
    let mut exec = Executor::default();
    let out = dir.join("out");
    let (da, db) = (sha256_bytes(b"model a"), sha256_bytes(b"model b"));
    // Pictures record the files relative to the graph's folder (here `dir`), the report by full path.
    let key = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
    let run_in_dir = |exec: &mut Executor, g: &graph::ValidGraph| {
        let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let progress = graph::exec::NoProgress;
        let opts = graph::exec::RunOptions {
            base_dir: dir.to_path_buf(),
            out_dir: out.clone(),
            graph_text: String::new(),
            progress: &progress,
            cancel,
        };
        exec.run(g, &opts)
    };

    for run in 1..=2 {
        // New prefixes make the savers run again while the loaders come from the cache.
        let g = crate::common::validate_str(&text.replace("RUN", &run.to_string()), &reg).unwrap();
        let r = run_in_dir(&mut exec, &g);
        assert!(r.ok, "{:?}", r.errors());
        if run == 2 {
            assert_eq!(r.ids_with(NodeStatus::Cached), ["la", "lb", "mix"]);
        }
        // The report names each file under the node that read it, cached or not.
        let la = r.nodes.iter().find(|n| n.id == "la").unwrap();
        assert_eq!(la.files_read.len(), 1);
        assert_eq!(la.files_read[0].path, a);
        assert_eq!(la.files_read[0].sha256.as_deref(), Some(da.as_str()));
        let all: Vec<_> = r.files_read().into_iter().map(|(p, f)| (p.clone(), f.sha256.clone().unwrap())).collect();
        assert_eq!(all, [(a.clone(), da.clone()), (b.clone(), db.clone())]);
        // Each picture records only what it was made from.
        let only_a = embedded_models(&out.join(format!("a_{run}_00001.png")));
        assert_eq!(only_a, BTreeMap::from([(key(&a), da.clone())]), "run {run}");
        let both = embedded_models(&out.join(format!("ab_{run}_00001.png")));
        assert_eq!(both, BTreeMap::from([(key(&a), da.clone()), (key(&b), db.clone())]), "run {run}");
    }

    // Replacing a file re-runs its loader and the new digest is recorded.
    std::fs::write(&b, b"model B!").unwrap();
    set_mtime(&b, SystemTime::now() + Duration::from_secs(5));
    let g = crate::common::validate_str(&text.replace("RUN", "3"), &reg).unwrap();
    let r = run_in_dir(&mut exec, &g);
    assert_eq!(r.ids_with(NodeStatus::Cached), ["la"]);
    let both = embedded_models(&out.join("ab_3_00001.png"));
    assert_eq!(both.get(&key(&b)), Some(&sha256_bytes(b"model B!")));

    // A graph with no model files records an empty set, so verify can tell "none" from "not recorded".
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample.png");
    let text = format!(
        r#"(nodes: {{
            "load": (kind: "LoadImage", params: {{ "image": {sample:?} }}),
            "save": (kind: "SaveImage", inputs: {{ "images": "load.image" }}, params: {{ "filename_prefix": "plain" }}),
        }})"#
    );
    let r = crate::common::run(&mut exec, &crate::common::validate_str(&text, &reg).unwrap(), &out);
    assert!(r.ok && r.files_read().is_empty());
    assert!(embedded_models(&out.join("plain_00001.png")).is_empty());
}

fn sdgraph(args: &[&str], cache_home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sdgraph"))
        .args(args)
        .env("SDGRAPH_CACHE_DIR", cache_home)
        .output()
        .expect("sdgraph runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A PNG as SaveImage writes it: a valid graph, its folder, and `models`.
fn picture(path: &Path, base: &Path, models: &str) {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample.png");
    let graph = format!(
        r#"(nodes: {{
            "load": (kind: "LoadImage", params: {{ "image": {sample:?} }}),
            "save": (kind: "SaveImage", inputs: {{ "images": "load.image" }}),
        }})"#
    );
    let base = base.display().to_string();
    let mut texts = vec![(png_meta::GRAPH_KEY, graph.as_str()), (png_meta::BASE_DIR_KEY, base.as_str())];
    if !models.is_empty() {
        texts.push((png_meta::MODELS_KEY, models));
    }
    std::fs::write(path, png_meta::encode_png(1, 1, 3, &[1, 2, 3], &texts).unwrap()).unwrap();
}

#[test]
fn check_verify_passes_for_unchanged_models_and_names_each_changed_or_missing_one() {
    let dir = crate::common::temp_dir("prov-verify");
    let cache = dir.join("cache");
    let (m1, m2) = (dir.join("one.safetensors"), dir.join("two.safetensors"));
    std::fs::write(&m1, b"one").unwrap();
    std::fs::write(&m2, b"two").unwrap();
    let models = serde_json::json!({
        m1.display().to_string(): sha256_bytes(b"one"),
        m2.display().to_string(): sha256_bytes(b"two"),
    })
    .to_string();
    let png = dir.join("pic.png");
    picture(&png, &dir, &models);
    let p = png.to_str().unwrap();

    // Old enough for the digest cache to keep them.
    let old = SystemTime::now() - Duration::from_secs(3600);
    set_mtime(&m1, old);
    set_mtime(&m2, old);
    let o = sdgraph(&["check", p, "--verify"], &cache);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("2 model files unchanged"), "{}", text(&o.stderr));
    // One byte changed, size and mtime restored: the cache would say unchanged; --verify reads the bytes.
    std::fs::write(&m2, b"twO").unwrap();
    set_mtime(&m2, old);
    let o = sdgraph(&["check", p, "--verify"], &cache);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains(&format!("{}: contents changed", m2.display())), "{}", text(&o.stderr));
    std::fs::write(&m2, b"two").unwrap();
    // Without --verify, check does not touch model files.
    std::fs::remove_file(&m2).unwrap();
    assert_eq!(sdgraph(&["check", p], &cache).status.code(), Some(0));

    std::fs::write(&m1, b"0ne").unwrap();
    set_mtime(&m1, SystemTime::now() + Duration::from_secs(5));
    let o = sdgraph(&["check", p, "--verify"], &cache);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("{}: contents changed", m1.display())), "{err}");
    assert!(err.contains(&sha256_bytes(b"0ne")) && err.contains(&sha256_bytes(b"one")), "{err}");
    assert!(err.contains(&format!("error: {}: cannot read", m2.display())), "{err}");
    assert!(err.contains("2 of 2 model files"), "{err}");

    let o = sdgraph(&["check", p, "--verify", "--json"], &cache);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let statuses: Vec<&str> = v["models"].as_array().unwrap().iter().map(|m| m["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["changed", "unreadable"]);
    assert_eq!(v["models"][0]["actual"], sha256_bytes(b"0ne"));
}

#[test]
fn check_verify_follows_a_moved_folder_and_refuses_what_it_cannot_verify() {
    let dir = crate::common::temp_dir("prov-verify-moved");
    let cache = dir.join("cache");
    // Made in /gone/place with /gone/place/models/m.safetensors; now the picture
    // and its models folder sit together here.
    std::fs::create_dir_all(dir.join("models")).unwrap();
    std::fs::write(dir.join("models/m.safetensors"), b"m").unwrap();
    let gone = Path::new("/sdgraph-gone/place");
    let models = serde_json::json!({ gone.join("models/m.safetensors").display().to_string(): sha256_bytes(b"m") });
    let png = dir.join("pic.png");
    picture(&png, gone, &models.to_string());
    let o = sdgraph(&["check", png.to_str().unwrap(), "--verify", "--json"], &cache);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["models"][0]["found_at"], dir.join("models/m.safetensors").display().to_string());

    // A picture from before provenance, a graph file, a corrupt record: exit 2 with a reason.
    let old = dir.join("old.png");
    picture(&old, &dir, "");
    let o = sdgraph(&["check", old.to_str().unwrap(), "--verify"], &cache);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("records no model digests"), "{}", text(&o.stderr));
    let ron = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/resize.ron");
    let o = sdgraph(&["check", ron.to_str().unwrap(), "--verify"], &cache);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("this is a graph file"), "{}", text(&o.stderr));
    let bad = dir.join("bad.png");
    picture(&bad, &dir, "[1, 2]");
    let o = sdgraph(&["check", bad.to_str().unwrap(), "--verify"], &cache);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("sdgraph-models"), "{}", text(&o.stderr));
}

#[test]
fn a_run_records_every_weight_file_of_the_checkpoint_in_its_report_and_picture() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("prov-run");
    let cache = dir.join("cache");
    let fixtures = crate::common::sd_tiny::fixtures();
    let single = dir.join("model.safetensors");
    std::fs::copy(fixtures.join("model.safetensors"), &single).unwrap();
    let diffusers = diffusers_with_metadata(&dir.join("diffusers"));
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample.png");
    let graph = dir.join("vae.ron");
    std::fs::write(
        &graph,
        format!(
            r#"(nodes: {{
    "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": "model.safetensors" }}),
    "load": (kind: "LoadImage", params: {{ "image": {sample:?} }}),
    "crop": (kind: "ImageCrop", inputs: {{ "image": "load.image" }}, params: {{ "width": 16, "height": 8 }}),
    "enc": (kind: "VAEEncode", inputs: {{ "pixels": "crop.image", "vae": "ckpt.vae" }}),
    "dec": (kind: "VAEDecode", inputs: {{ "samples": "enc.latent", "vae": "ckpt.vae" }}),
    "save": (kind: "SaveImage", inputs: {{ "images": "dec.image" }}, params: {{ "filename_prefix": "rt" }}),
}})"#
        ),
    )
    .unwrap();
    let out = dir.join("out");
    let (g, o_) = (graph.to_str().unwrap(), out.to_str().unwrap());

    // A single file: relative to the graph, recorded by its absolute path.
    let o = sdgraph(&["run", g, "--out-dir", o_, "--json"], &cache);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let want = sha256_file(&single).unwrap();
    let abs = std::path::absolute(&single).unwrap().display().to_string();
    assert_eq!(v["models"], serde_json::json!({ abs.clone(): want.clone() }));
    assert_eq!(v["nodes"][0]["files_read"][0]["sha256"], want.as_str());
    let png = out.join("rt_00001.png");
    // The picture records it relative to the graph's folder, and the graph's folder relative to its own:
    // no absolute path, so sharing the picture shares no folder names.
    assert_eq!(embedded_models(&png), BTreeMap::from([("model.safetensors".to_string(), want.clone())]));
    let texts = png_meta::read_texts(&std::fs::read(&png).unwrap()).unwrap();
    let base = texts.iter().find(|(k, _)| k == png_meta::BASE_DIR_KEY).map(|(_, v)| v.as_str());
    assert_eq!(base, Some(".."));
    let home = std::path::absolute(&dir).unwrap().display().to_string();
    assert!(texts.iter().all(|(_, v)| !v.contains(&home)), "{texts:?}");
    let o = sdgraph(&["check", png.to_str().unwrap(), "--verify"], &cache);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    // The whole folder moved elsewhere: the picture still verifies and re-runs from the graph's folder.
    let moved_root = crate::common::temp_dir("prov-run-moved");
    let moved = moved_root.join("copy");
    std::fs::create_dir_all(moved.join("out")).unwrap();
    std::fs::copy(&single, moved.join("model.safetensors")).unwrap();
    std::fs::copy(&png, moved.join("out/rt_00001.png")).unwrap();
    let moved_png = moved.join("out/rt_00001.png");
    let o = sdgraph(&["check", moved_png.to_str().unwrap(), "--verify"], &cache);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let o = sdgraph(&["run", moved_png.to_str().unwrap(), "--out-dir", moved.join("again").to_str().unwrap()], &cache);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Asked for, absolute paths as before.
    let o = Command::new(env!("CARGO_BIN_EXE_sdgraph"))
        .args(["run", g, "--out-dir", dir.join("abs").to_str().unwrap()])
        .env("SDGRAPH_CACHE_DIR", &cache)
        .env("SDGRAPH_ABSOLUTE_PATHS", "1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(embedded_models(&dir.join("abs/rt_00001.png")), BTreeMap::from([(abs, want)]));

    // A diffusers folder: each component's weight file (the configs are not weights).
    let d = diffusers.display().to_string();
    let o = sdgraph(&["run", g, "--out-dir", o_, "--json", "--set", &format!("ckpt.ckpt_name={d:?}")], &cache);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let got: BTreeMap<String, String> = serde_json::from_value(v["models"].clone()).unwrap();
    let want: BTreeMap<String, String> = [
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ]
    .iter()
    .map(|f| {
        let p = std::path::absolute(diffusers.join(f)).unwrap();
        (p.display().to_string(), sha256_file(&p).unwrap())
    })
    .collect();
    assert_eq!(got, want);
    let relative: BTreeMap<String, String> =
        want.into_iter().map(|(p, d)| (Path::new(&p).strip_prefix(&home).unwrap().display().to_string(), d)).collect();
    assert_eq!(embedded_models(&out.join("rt_00002.png")), relative);
}

#[test]
fn replacing_a_diffusers_component_in_place_reloads_the_checkpoint() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("prov-diffusers-reload");
    let folder = diffusers_with_metadata(&dir.join("diffusers"));
    let text = format!(
        r#"(nodes: {{
            "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": {folder:?} }}),
            "empty": (kind: "EmptyLatentImage", params: {{ "width": 16, "height": 16 }}),
            "dec": (kind: "VAEDecode", inputs: {{ "samples": "empty.latent", "vae": "ckpt.vae" }}),
            "save": (kind: "SaveImage", inputs: {{ "images": "dec.image" }}, params: {{ "filename_prefix": "RUN" }}),
        }})"#
    );
    let reg = nodes::builtin_registry();
    let mut exec = Executor::default();
    let out = dir.join("out");
    let mut run = |n: u32| {
        let g = crate::common::validate_str(&text.replace("RUN", &n.to_string()), &reg).unwrap();
        let r = crate::common::run(&mut exec, &g, &out);
        assert!(r.ok, "{:?}", r.errors());
        r
    };
    assert_eq!(run(1).ids_with(NodeStatus::Executed), ["ckpt", "empty", "dec", "save"]);
    assert_eq!(run(2).ids_with(NodeStatus::Cached), ["ckpt", "empty", "dec"]);
    // The folder's own mtime stays; the component's changes.
    let vae = folder.join("vae/diffusion_pytorch_model.safetensors");
    set_mtime(&vae, SystemTime::now() + Duration::from_secs(5));
    let r = run(3);
    assert_eq!(r.ids_with(NodeStatus::Executed), ["ckpt", "dec", "save"]);
    assert_eq!(embedded_models(&out.join("3_00001.png")).len(), 3);
}

/// The fixture's diffusers folder, with the metadata the tiny model needs
/// (its head and group counts are not SD's) written into the UNet's file.
fn diffusers_with_metadata(to: &Path) -> PathBuf {
    use models::checkpoint::safetensors::{Dtype, SafeTensors, write_with_metadata};
    let from = crate::common::sd_tiny::fixtures().join("diffusers");
    for part in ["unet", "vae", "text_encoder"] {
        std::fs::create_dir_all(to.join(part)).unwrap();
    }
    std::fs::copy(
        from.join("vae/diffusion_pytorch_model.safetensors"),
        to.join("vae/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    std::fs::copy(from.join("text_encoder/model.safetensors"), to.join("text_encoder/model.safetensors")).unwrap();
    let st = SafeTensors::open(&from.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let owned: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .names()
        .map(|n| {
            let (shape, data) = st.f32_any(n).unwrap();
            (n.to_string(), shape, data)
        })
        .collect();
    let tensors: Vec<(&str, &[usize], &[f32])> =
        owned.iter().map(|(n, s, d)| (n.as_str(), s.as_slice(), d.as_slice())).collect();
    let meta = [("sdgraph.unet.heads", "2"), ("sdgraph.clip.heads", "4"), ("sdgraph.norm_groups", "4")];
    write_with_metadata(&to.join("unet/diffusion_pytorch_model.safetensors"), &tensors, Dtype::F32, &meta).unwrap();
    to.to_path_buf()
}
