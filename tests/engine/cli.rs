//! The `sdgraph` command end to end: exit codes, output files, reports.

use std::path::{Path, PathBuf};
use std::process::Output;

fn sdgraph(args: &[&str]) -> Output {
    crate::common::sdgraph_command().args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("sdgraph runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn pngs_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect();
    v.sort();
    v
}

fn rgb(path: &Path) -> image::RgbImage {
    image::open(path).unwrap().to_rgb8()
}

#[test]
fn run_resize_writes_a_png_that_carries_its_graph_and_reruns_to_the_same_picture() {
    let out = crate::common::temp_dir("cli-resize");
    let o = sdgraph(&["run", "graphs/resize.ron", "--out-dir", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let first = out.join("resize_00001.png");
    assert_eq!(pngs_in(&out), std::slice::from_ref(&first));
    let pic = rgb(&first);
    assert_eq!(pic.dimensions(), (320, 240));

    let bytes = std::fs::read(&first).unwrap();
    let (graph, base) = nodes::png_meta::embedded_graph(&bytes).unwrap().expect("graph embedded");
    let original = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/resize.ron")).unwrap();
    assert_eq!(graph, original);
    assert!(base.unwrap().ends_with("graphs"));

    // Running the PNG makes the same picture again, under a new number.
    let o = sdgraph(&["run", first.to_str().unwrap(), "--out-dir", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let second = out.join("resize_00002.png");
    assert_eq!(pngs_in(&out), [first.clone(), second.clone()]);
    assert_eq!(rgb(&second), pic);
}

#[test]
fn set_overrides_params_and_the_png_records_the_overridden_graph() {
    let out = crate::common::temp_dir("cli-set");
    let o = sdgraph(&[
        "run",
        "graphs/resize.ron",
        "--out-dir",
        out.to_str().unwrap(),
        "--set",
        "scale.width=64",
        "--set",
        "scale.height=0",
        "--set",
        "save.filename_prefix=small",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let png = out.join("small_00001.png");
    assert_eq!(rgb(&png).dimensions(), (64, 48), "height 0 keeps the 4:3 aspect");
    let (graph, _) = nodes::png_meta::embedded_graph(&std::fs::read(&png).unwrap()).unwrap().unwrap();
    assert!(graph.contains("\"width\": 64"), "{graph}");
    // The recorded graph is itself valid and re-runs to the same picture.
    let o = sdgraph(&["run", png.to_str().unwrap(), "--out-dir", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(rgb(&out.join("small_00002.png")), rgb(&png));
}

#[test]
fn json_run_report_lists_nodes_and_outputs() {
    let out = crate::common::temp_dir("cli-json");
    let o = sdgraph(&["run", "graphs/resize.ron", "--json", "--out-dir", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(o.stderr.is_empty(), "--json keeps stderr quiet: {}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    let nodes = v["nodes"].as_array().unwrap();
    let ids: Vec<&str> = nodes.iter().map(|n| n["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["load", "scale", "save"]);
    assert!(nodes.iter().all(|n| n["status"] == "executed" && n["seconds"].is_number()));
    assert_eq!(nodes[2]["outputs"][0].as_str().unwrap(), out.join("resize_00001.png").to_str().unwrap());
    assert_eq!(v["outputs"].as_array().unwrap().len(), 1);
}

#[test]
fn check_accepts_every_example_graph() {
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs")).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_none_or(|x| x != "ron") {
            continue; // graphs/embeddings/ and the like
        }
        let o = sdgraph(&["check", "--plugins", "plugins", p.to_str().unwrap()]);
        assert!(o.status.success(), "{}: {}", p.display(), text(&o.stderr));
    }
}

#[test]
fn check_of_a_bad_graph_exits_2_with_every_problem() {
    let dir = crate::common::temp_dir("cli-bad");
    let bad = dir.join("bad.ron");
    std::fs::write(
        &bad,
        r#"(nodes: {
    "load": (kind: "LoadImage", params: { "image": "does-not-exist.png" }),
    "scale": (kind: "ImageScal", inputs: { "image": "load.image" }),
    "save": (kind: "SaveImage", inputs: { "images": "load.mask" }),
})"#,
    )
    .unwrap();
    let o = sdgraph(&["check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    let name = bad.display();
    assert!(err.contains(&format!("error: {name}:3:21: node \"scale\": unknown node kind \"ImageScal\"")), "{err}");
    assert!(err.contains(&format!("error: {name}:4:53: node \"save\", input \"images\": type mismatch")), "{err}");
    assert!(err.contains("2 problems found"), "{err}");
    assert!(!err.contains("does-not-exist"), "check must not touch input files: {err}");

    let o = sdgraph(&["check", bad.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["errors"][0]["line"], 3);
    assert_eq!(v["errors"][0]["node"], "scale");
}

#[test]
fn run_of_a_bad_graph_exits_2_and_a_failing_run_exits_1() {
    let dir = crate::common::temp_dir("cli-fail");
    let missing = dir.join("missing.ron");
    std::fs::write(
        &missing,
        r#"(nodes: {
    "load": (kind: "LoadImage", params: { "image": "does-not-exist.png" }),
    "save": (kind: "SaveImage", inputs: { "images": "load.image" }),
})"#,
    )
    .unwrap();
    let o = sdgraph(&["run", missing.to_str().unwrap(), "--out-dir", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("node \"load\" (LoadImage): cannot open"), "{err}");
    assert!(err.contains("does-not-exist.png"), "{err}");

    let o = sdgraph(&["run", dir.join("nope.ron").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("nope.ron: cannot read file"), "{}", text(&o.stderr));

    let o = sdgraph(&["run", "graphs/resize.ron", "--set", "scale.width"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("expected node.param=value"), "{}", text(&o.stderr));
}

#[test]
fn a_png_without_a_graph_is_refused() {
    let o = sdgraph(&["run", "assets/sample.png"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("carries no graph (neither sdgraph's nor a ComfyUI workflow)"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(sdgraph(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(sdgraph(&["run"]).status.code(), Some(2));
    assert_eq!(sdgraph(&["--help"]).status.code(), Some(0));
}

#[test]
fn nodes_lists_kinds_and_shows_one_in_text_and_json() {
    let o = sdgraph(&["nodes"]);
    assert!(o.status.success());
    let list = text(&o.stdout);
    for k in ["LoadImage", "SaveImage", "ImageScale", "ImageScaleBy", "ImageCrop", "ImageBlend", "ImageInvert"] {
        assert!(list.lines().any(|l| l.starts_with(k)), "{k} missing from:\n{list}");
    }
    let o = sdgraph(&["nodes", "ImageScale"]);
    let one = text(&o.stdout);
    assert!(one.contains("  image: Image - The images to resize."), "{one}");
    assert!(one.contains("  width: Int 0..=16384 = 512"), "{one}");
    assert!(
        one.contains("upscale_method: one of nearest-exact | bilinear | area | bicubic | lanczos = \"nearest-exact\""),
        "{one}"
    );

    let o = sdgraph(&["nodes", "ImageScale", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kind"], "ImageScale");
    assert_eq!(v["params"][1]["name"], "width");
    assert_eq!(v["params"][1]["type"], "int");
    assert_eq!(v["params"][1]["max"], 16384);
    assert_eq!(v["outputs"][0]["type"], "Image");

    let o = sdgraph(&["nodes", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.as_array().unwrap().len() >= 7);

    let o = sdgraph(&["nodes", "ImageScal"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("did you mean \"ImageScale\""));
}

#[test]
fn dot_shows_kinds_and_port_types() {
    let o = sdgraph(&["dot", "graphs/resize.ron"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let dot = text(&o.stdout);
    assert!(dot.starts_with("digraph \"graphs/resize.ron\" {"), "{dot}");
    assert!(dot.contains(r#""load" [label="load\nLoadImage"];"#), "{dot}");
    assert!(dot.contains(r#""load" -> "scale" [label="image -> image : Image"];"#), "{dot}");
    assert!(dot.contains(r#""scale" -> "save" [label="image -> images : Image"];"#), "{dot}");
    assert!(dot.trim_end().ends_with('}'));
}

#[test]
fn image_ops_example_runs_and_writes_into_a_subfolder() {
    let out = crate::common::temp_dir("cli-ops");
    let o = sdgraph(&["run", "graphs/image_ops.ron", "--out-dir", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let blend = rgb(&out.join("image_ops/blend_00001.png"));
    let sun = rgb(&out.join("image_ops/sun_00001.png"));
    assert_eq!(blend.dimensions(), (160, 120));
    assert_eq!(sun.dimensions(), (160, 120));
    // The crop is centred on the sun: its middle is sun-yellow.
    let p = sun.get_pixel(80, 60).0;
    assert!(p[0] > 230 && p[1] > 190 && p[2] < 130, "{p:?}");
}

#[test]
fn gpu_reports_the_adapter_and_refuses_an_unknown_name() {
    let o = sdgraph(&["gpu", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(!v["name"].as_str().unwrap().is_empty());
    assert!(v["max_storage_buffer_binding_size"].as_u64().unwrap() >= 128 << 20);
    assert!(v["features"]["shader_f16"].is_boolean());

    let o = sdgraph(&["gpu", "--adapter", "no-such-gpu-anywhere"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("no adapter matches \"no-such-gpu-anywhere\"; available:"), "{}", text(&o.stderr));
}

/// Without a display, Mesa's device-select layer tried Wayland (wgpu enabled its surface
/// extension) and printed "XDG_RUNTIME_DIR is invalid" twice before every run.
#[test]
fn gpu_prints_no_display_errors_on_a_machine_without_a_display() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let o = crate::common::sdgraph_command()
        .arg("gpu")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("WAYLAND_DISPLAY")
        .env_remove("DISPLAY")
        .output()
        .expect("sdgraph runs");
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(!text(&o.stderr).contains("XDG_RUNTIME_DIR"), "{}", text(&o.stderr));
}

#[test]
fn bench_kernels_small_prints_every_case_with_positive_throughput() {
    let o = sdgraph(&["bench", "kernels", "--small", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let results = v["results"].as_array().unwrap();
    assert!(results.iter().any(|r| r["name"].as_str().unwrap().starts_with("matmul")));
    assert!(results.iter().any(|r| r["name"].as_str().unwrap().starts_with("conv")));
    assert!(results.iter().all(|r| r["tflops"].as_f64().unwrap() > 0.0));
}

#[test]
fn run_with_an_unknown_adapter_fails_only_when_the_graph_needs_the_gpu() {
    let out = crate::common::temp_dir("cli-adapter");
    // Image-only graphs never open the GPU.
    let o = sdgraph(&["run", "graphs/resize.ron", "--adapter", "no-such-gpu", "--out-dir", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    // A model graph does, and names the problem.
    let g = out.join("vae.ron");
    let ckpt = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sd_tiny/model.safetensors");
    std::fs::write(
        &g,
        format!(
            r#"(nodes: {{
    "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": {ckpt:?} }}),
    "empty": (kind: "EmptyLatentImage", params: {{ "width": 64, "height": 64 }}),
    "dec": (kind: "VAEDecode", inputs: {{ "samples": "empty.latent", "vae": "ckpt.vae" }}),
    "save": (kind: "SaveImage", inputs: {{ "images": "dec.image" }}),
}})"#
        ),
    )
    .unwrap();
    let o = sdgraph(&["run", g.to_str().unwrap(), "--adapter", "no-such-gpu", "--out-dir", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("no adapter matches \"no-such-gpu\""), "{}", text(&o.stderr));
}

#[test]
fn plugin_kinds_are_listed_with_plugins_and_unknown_without() {
    let o = sdgraph(&["nodes", "Vignette", "--plugins", "plugins"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).starts_with("Vignette"), "{}", text(&o.stdout));
    let o = sdgraph(&["nodes", "Vignette"]);
    assert_eq!(o.status.code(), Some(2));
    let o = sdgraph(&["check", "--plugins", "no/such/folder", "graphs/resize.ron"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
}

/// wgpu's own messages reach stderr, filtered by RUST_LOG (they used to be dropped: no logger was installed).
#[test]
fn rust_log_shows_wgpus_messages() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let o = crate::common::sdgraph_command().args(["gpu"]).env("RUST_LOG", "wgpu_hal=debug").output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stderr).lines().any(|l| l.starts_with("debug: [wgpu_hal::")), "{}", text(&o.stderr));
    let quiet = crate::common::sdgraph_command().args(["gpu"]).env_remove("RUST_LOG").output().unwrap();
    assert!(!text(&quiet.stderr).contains("debug: ["), "{}", text(&quiet.stderr));
}

/// `sdgraph gpu` with the tensor-core test switch (SDGRAPH_TEST_TENSOR_CORE_FAULT): on lavapipe the
/// portable kernel stands in for each coop kernel with one element corrupted, so every verdict is
/// FAILED, warned about by name, written to the cache folder, and read from there by the next process.
#[test]
fn gpu_shows_each_tensor_core_verdict_and_the_next_process_reads_it_from_the_cache() {
    let Some(shared) = gpu::testing::shared_gpu() else { return };
    if !shared.features().shader_f16 {
        return;
    }
    let dir = crate::common::temp_dir("cli-tensor-cores");
    let cache = dir.join("cache");
    let gpu_cmd = |json: bool, fault: &str| {
        let mut c = crate::common::sdgraph_command();
        c.arg("gpu").args(json.then_some("--json")).env("SDGRAPH_CACHE_DIR", &cache).env_remove("RUST_LOG");
        c.env("SDGRAPH_TEST_TENSOR_CORE_FAULT", fault).env_remove("SDGRAPH_TENSOR_CORES").output().unwrap()
    };
    let kernels = ["matmul_coop", "conv2d_coop", "attention_coop"];
    let first = gpu_cmd(true, "corrupt");
    assert!(first.status.success(), "{}", text(&first.stderr));
    let v: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    for name in kernels {
        let k = &v["tensor_core_check"][name];
        assert_eq!((k["verdict"].as_str(), k["cached"].as_bool()), (Some("failed"), Some(false)), "{k}");
        assert!(k["summary"].as_str().unwrap().starts_with("FAILED (1 of "), "{k}");
        let warning = format!("tensor-core kernel {name} failed its self-test on {}", shared.info.name);
        assert!(text(&first.stderr).contains(&warning), "{}", text(&first.stderr));
    }
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cache.join("tensor-core-check.json")).unwrap()).unwrap();
    let recorded: Vec<_> =
        file["entries"].as_array().unwrap().iter().map(|e| (e["kernel"].clone(), e["verdict"].clone())).collect();
    assert_eq!(recorded, kernels.map(|k| (k.into(), "failed".into())), "{file:#}");

    // The next process reads the verdicts (and still warns, once per kernel) without testing.
    let second = gpu_cmd(true, "corrupt");
    let v: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    for name in kernels {
        let k = &v["tensor_core_check"][name];
        assert_eq!(
            (k["verdict"].as_str(), k["cached"].as_bool(), k["ms"].is_null()),
            (Some("failed"), Some(true), true)
        );
        let warning = format!("tensor-core kernel {name} failed its self-test (verdict cached)");
        assert_eq!(text(&second.stderr).matches(&warning).count(), 1, "{}", text(&second.stderr));
    }
    let plain = text(&gpu_cmd(false, "corrupt").stdout);
    assert!(
        plain.contains("\n  matmul_coop     FAILED (1 of ") && plain.contains("(cached, portable stand-in"),
        "{plain}"
    );

    // A correct stand-in passes (tested now: the corrupt verdicts are another mode's).
    let plain = text(&gpu_cmd(false, "correct").stdout);
    assert!(plain.contains("  attention_coop  passed (tested now, "), "{plain}");

    // Without the switch: nothing to test on an adapter without tensor cores; off when switched off.
    if !shared.features().coop_matrix_f16 {
        let plain = text(&gpu_cmd(false, "").stdout);
        assert!(plain.contains("  conv2d_coop     not available on this adapter\n"), "{plain}");
    }
    let off = crate::common::sdgraph_command().args(["gpu"]).env("SDGRAPH_TENSOR_CORES", "0").output().unwrap();
    assert!(text(&off.stdout).contains("  matmul_coop     off (SDGRAPH_TENSOR_CORES=0)\n"), "{}", text(&off.stdout));
    let bad =
        crate::common::sdgraph_command().args(["gpu"]).env("SDGRAPH_TEST_TENSOR_CORE_FAULT", "maybe").output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("SDGRAPH_TEST_TENSOR_CORE_FAULT=\"maybe\""), "{}", text(&bad.stderr));
}
