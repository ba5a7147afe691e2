//! `embedding:name` through the command: `--embeddings-dir` is searched first, then each `--models-dir`'s
//! `embeddings/`, then the graph's own `embeddings/` (graphs/embedding.ron as shipped); the file used is in the
//! run report; a name found nowhere is a warning on stderr and the run goes on.

use std::path::{Path, PathBuf};

fn sdgraph(args: &[&str]) -> std::process::Output {
    crate::common::sdgraph_command().args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("sdgraph runs")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embeddings").join(name)
}

/// Runs graphs/embedding.ron (one step) with `extra` arguments; the embedding files the JSON report says were read,
/// and stderr.
fn run(out: &Path, extra: &[&str]) -> (Vec<String>, String) {
    let mut args = vec!["run", "graphs/embedding.ron", "--json", "--progress", "--set", "sample.steps=1", "--out-dir"];
    args.push(out.to_str().unwrap());
    args.extend_from_slice(extra);
    let o = sdgraph(&args);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut read = Vec::new();
    for node in report["nodes"].as_array().unwrap() {
        for f in node["files_read"].as_array().into_iter().flatten() {
            let p = f["path"].as_str().unwrap();
            if !p.ends_with("sdgraph-demo.safetensors") {
                read.push(p.to_owned());
            }
        }
    }
    (read, stderr)
}

#[test]
fn the_embeddings_dir_flag_and_the_models_folder_are_searched_before_the_graph_folder() {
    let tmp = crate::common::temp_dir("cli-embeddings");
    let out = tmp.join("out");
    let name = "sdgraph-demo-red-circle";

    // As shipped: the graph's own embeddings/ folder.
    let (read, _) = run(&out, &[]);
    assert_eq!(read.len(), 1, "{read:?}");
    assert!(read[0].ends_with(&format!("graphs/embeddings/{name}.safetensors")), "{read:?}");

    // A models folder's embeddings/ comes first (here an A1111 .pt of the same width).
    let models = tmp.join("models");
    std::fs::create_dir_all(models.join("embeddings")).unwrap();
    std::fs::copy(fixture("tiny_pt.pt"), models.join(format!("embeddings/{name}.pt"))).unwrap();
    let (read, _) = run(&out, &["--models-dir", models.to_str().unwrap()]);
    assert_eq!(read, [models.join(format!("embeddings/{name}.pt")).display().to_string()]);

    // --embeddings-dir comes before both.
    let flag = tmp.join("flag");
    std::fs::create_dir_all(&flag).unwrap();
    std::fs::copy(fixture("tiny_st.safetensors"), flag.join(format!("{name}.safetensors"))).unwrap();
    let (read, _) = run(&out, &["--models-dir", models.to_str().unwrap(), "--embeddings-dir", flag.to_str().unwrap()]);
    assert_eq!(read, [flag.join(format!("{name}.safetensors")).display().to_string()]);

    // A name found nowhere: ComfyUI's warning, and the picture is still made.
    let (read, stderr) = run(&out, &["--set", "pos.text=a embedding:not_there red circle"]);
    assert!(read.is_empty(), "{read:?}");
    assert!(stderr.contains("embedding:not_there does not exist, ignoring"), "{stderr}");
}
