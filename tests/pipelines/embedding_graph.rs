//! graphs/embedding.ron as shipped: `embedding:sdgraph-demo-red-circle`, found in graphs/embeddings/ and holding
//! the demo model's own vectors for "red circle", draws the same picture as graphs/txt2img.ron's words.

use std::path::{Path, PathBuf};

use graph::exec::Executor;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `graphs/<name>` as shipped in `exec`; the saved picture and what the run read.
fn run(exec: &mut Executor, name: &str, sets: &[&str], out: &Path) -> (PathBuf, Vec<PathBuf>) {
    let report = crate::demo_model::run_shipped(exec, name, sets, out);
    let read = report.nodes.iter().flat_map(|n| n.files_read.iter().map(|f| f.path.clone())).collect();
    (report.outputs()[0].clone(), read)
}

#[test]
fn the_embedding_graph_draws_what_its_words_draw() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("embedding-graph");
    let mut exec = Executor::default();
    let (with_embedding, read) = run(&mut exec, "embedding.ron", &[], &dir);
    let embedding = root().join("graphs/embeddings/sdgraph-demo-red-circle.safetensors");
    assert!(read.iter().any(|p| p.ends_with("graphs/embeddings/sdgraph-demo-red-circle.safetensors")), "{read:?}");
    assert!(embedding.is_file());
    let (with_words, _) = run(&mut exec, "txt2img.ron", &[], &dir);
    let a = image::open(&with_embedding).unwrap().to_rgb8();
    let b = image::open(&with_words).unwrap().to_rgb8();
    assert_eq!(a.dimensions(), (64, 64));
    assert!(a == b, "{with_embedding:?} and {with_words:?} differ");
    // Without the embedding's two positions the prompt draws something else.
    let (without, _) = run(&mut exec, "embedding.ron", &["pos.text=a on a blue background, top left"], &dir);
    assert!(image::open(&without).unwrap().to_rgb8() != a, "the embedding changed nothing");
}
