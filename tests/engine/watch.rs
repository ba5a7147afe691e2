//! `sdgraph watch` end to end: a second run after an edit re-executes only
//! the changed node and its dependents; an invalid save reports errors and
//! the watch goes on; editing an input image re-runs its loader.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

struct Watch {
    child: Child,
    lines: Receiver<String>,
}

impl Watch {
    fn start(graph: &Path, out: &Path) -> Watch {
        Self::start_with(graph, out, &[])
    }

    fn start_with(graph: &Path, out: &Path, extra: &[&str]) -> Watch {
        let mut child = crate::common::sdgraph_command()
            .args(["watch", graph.to_str().unwrap(), "--json", "--debounce-ms", "100", "--out-dir"])
            .arg(out)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Watch { child, lines }
    }

    fn next_run(&self) -> serde_json::Value {
        let line = self.lines.recv_timeout(Duration::from_secs(30)).expect("a run report within 30 s");
        serde_json::from_str(&line).unwrap()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn graph(width: u32) -> String {
    format!(
        r#"(nodes: {{
    "load": (kind: "LoadImage", params: {{ "image": "in.png" }}),
    "inv": (kind: "ImageInvert", inputs: {{ "image": "load.image" }}),
    "save_inv": (kind: "SaveImage", inputs: {{ "images": "inv.image" }}, params: {{ "filename_prefix": "inv" }}),
    "scale": (kind: "ImageScale", inputs: {{ "image": "load.image" }}, params: {{ "width": {width}, "height": 0 }}),
    "save_scale": (kind: "SaveImage", inputs: {{ "images": "scale.image" }}, params: {{ "filename_prefix": "scale" }}),
}})"#
    )
}

fn ids(v: &serde_json::Value, key: &str) -> Vec<String> {
    v[key].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

/// Writes via a temporary file and a rename, as editors save.
fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn watch_reruns_only_what_an_edit_changed_and_survives_a_bad_save() {
    let dir = crate::common::temp_dir("watch");
    let g = dir.join("g.ron");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample.png"), dir.join("in.png")).unwrap();
    save(&g, &graph(80));
    let w = Watch::start(&g, &dir.join("out"));

    let first = w.next_run();
    assert_eq!(first["run"], 1);
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(ids(&first, "executed"), ["load", "inv", "save_inv", "scale", "save_scale"]);

    save(&g, &graph(40));
    let second = w.next_run();
    assert_eq!(second["ok"], true, "{second}");
    assert_eq!(ids(&second, "executed"), ["scale", "save_scale"]);
    assert_eq!(ids(&second, "cached"), ["load", "inv", "save_inv"]);
    assert!(second["outputs"][0].as_str().unwrap().ends_with("scale_00002.png"), "{second}");

    save(&g, "(nodes: { \"load\": (kind: \"LoadImag\") })");
    let third = w.next_run();
    assert_eq!(third["ok"], false);
    assert!(third["errors"][0].as_str().unwrap().contains("unknown node kind \"LoadImag\""), "{third}");

    // Fixing the file runs again; the cache survived the bad save.
    save(&g, &graph(40));
    let fourth = w.next_run();
    assert_eq!(fourth["ok"], true, "{fourth}");
    assert_eq!(ids(&fourth, "executed"), Vec::<String>::new());

    // Changing the input picture re-runs everything that reads it.
    let img = image::RgbImage::from_pixel(20, 10, image::Rgb([10, 200, 30]));
    let tmp = dir.join("in.tmp.png");
    img.save(&tmp).unwrap();
    std::fs::rename(&tmp, dir.join("in.png")).unwrap();
    let fifth = w.next_run();
    assert_eq!(ids(&fifth, "executed"), ["load", "inv", "save_inv", "scale", "save_scale"], "{fifth}");
}

#[test]
fn watch_with_max_runs_exits_after_the_first_run() {
    let dir = crate::common::temp_dir("watch-once");
    let g = dir.join("g.ron");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample.png"), dir.join("in.png")).unwrap();
    save(&g, &graph(30));
    let o = crate::common::sdgraph_command()
        .args(["watch", g.to_str().unwrap(), "--json", "--max-runs", "1", "--out-dir"])
        .arg(dir.join("out"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["run"], 1);
    assert_eq!(v["ok"], true);
}

fn scale_plugin(factor: &str) -> String {
    format!(
        r#"node {{
  kind = "TestScale",
  inputs = {{ image = {{ type = "Image" }} }},
  outputs = {{ image = {{ type = "Image" }} }},
  run = function(inputs, params)
    return {{ image = inputs.image:map(function(r, g, b) return r * {factor}, g * {factor}, b * {factor} end) }}
  end,
}}
"#
    )
}

#[test]
fn watch_reloads_an_edited_plugin_and_reruns_only_its_nodes() {
    let dir = crate::common::temp_dir("watch-plugin");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let plugin = plugins.join("scale.lua");
    save(&plugin, &scale_plugin("0.5"));
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample.png"), dir.join("in.png")).unwrap();
    let g = dir.join("g.ron");
    save(
        &g,
        r#"(nodes: {
    "load": (kind: "LoadImage", params: { "image": "in.png" }),
    "inv": (kind: "ImageInvert", inputs: { "image": "load.image" }),
    "save_inv": (kind: "SaveImage", inputs: { "images": "inv.image" }, params: { "filename_prefix": "inv" }),
    "dim": (kind: "TestScale", inputs: { "image": "load.image" }),
    "save_dim": (kind: "SaveImage", inputs: { "images": "dim.image" }, params: { "filename_prefix": "dim" }),
})"#,
    );
    let out = dir.join("out");
    let w = Watch::start_with(&g, &out, &["--plugins", plugins.to_str().unwrap()]);
    let first = w.next_run();
    assert_eq!(first["ok"], true, "{first}");
    assert_eq!(ids(&first, "executed"), ["load", "inv", "save_inv", "dim", "save_dim"]);
    let mean = |name: &str| {
        let img = image::open(out.join(name)).unwrap().to_rgb8();
        img.pixels().map(|p| p.0.iter().map(|&c| c as f64).sum::<f64>()).sum::<f64>() / img.pixels().len() as f64
    };
    let dim1 = mean("dim_00001.png");

    save(&plugin, &scale_plugin("0.25"));
    let second = w.next_run();
    assert_eq!(second["ok"], true, "{second}");
    assert_eq!(ids(&second, "executed"), ["dim", "save_dim"]);
    assert_eq!(ids(&second, "cached"), ["load", "inv", "save_inv"]);
    let dim2 = mean("dim_00002.png");
    assert!((dim2 / dim1 - 0.5).abs() < 0.02, "the edited plugin halves the picture again: {dim1} -> {dim2}");

    // A broken plugin is reported with its file and line; the watch goes on.
    save(&plugin, "node {\n  kind = \"TestScale\",\n  run = 3 +\n}\n");
    let third = w.next_run();
    assert_eq!(third["ok"], false, "{third}");
    let err = third["errors"][0].as_str().unwrap();
    assert!(err.contains("scale.lua"), "{err}");

    save(&plugin, &scale_plugin("0.25"));
    let fourth = w.next_run();
    assert_eq!(fourth["ok"], true, "{fourth}");
    assert_eq!(ids(&fourth, "executed"), Vec::<String>::new(), "same plugin text as the last good run: all cached");
}
