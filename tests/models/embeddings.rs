//! Textual-inversion embeddings (`embedding:name` in CLIPTextEncode) against ComfyUI's code path, ported and run on
//! the tiny model by tests/fixtures/embeddings/make_embedding_fixtures.py: the files in A1111's `.pt`, safetensors
//! (`emb_params`, SDXL's `clip_l`) and diffusers' `.bin` layouts; the token layout and the conditioning of prompts
//! that use them, weighted, in a second chunk, through CLIP skip; a missing name and a width mismatch (warned about
//! and dropped as ComfyUI does); a pickle that calls `os.system`, refused unread; the cache key following the file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::common::sd_tiny::full_vocab_checkpoint_with;
use graph::{NodeKind, Value};
use models::checkpoint::safetensors::SafeTensors;
use models::clip::ClipLayer;
use models::embeddings::{Embedding, EmbeddingFolders, load_embedding};
use models::prompt_weights::{EMBEDDING_SLOT, EmbeddingLookup, tokenize_with_embeddings};
use nodes::payload::{ClipHandle, Conditioning};

const TOKEN_EMBEDDING: &str = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/embeddings")
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("meta.json")).unwrap()).unwrap()
}

#[test]
fn embedding_files_are_read_in_every_layout() {
    let dir = fixtures();
    let pt = load_embedding(&dir.join("tiny_pt.pt"), "clip_l").unwrap();
    assert_eq!((pt.vectors, pt.width), (2, 32));
    let st = load_embedding(&dir.join("tiny_st.safetensors"), "clip_l").unwrap();
    let raw = SafeTensors::open(&dir.join("tiny_st.safetensors")).unwrap();
    assert_eq!(st, Embedding { vectors: 3, width: 32, data: raw.f32("emb_params", &[3, 32]).unwrap() });
    let bin = load_embedding(&dir.join("tiny_bin.bin"), "clip_l").unwrap();
    assert_eq!((bin.vectors, bin.width), (1, 32));
    // SDXL's pair: clip_l for SD 1.x (clip_g would be 48 wide), clip_g when asked.
    let pair = dir.join("sub/sdxl_pair.safetensors");
    let raw = SafeTensors::open(&pair).unwrap();
    let l = load_embedding(&pair, "clip_l").unwrap();
    assert_eq!(l.data, raw.f32("clip_l", &[2, 32]).unwrap());
    assert_eq!(load_embedding(&pair, "clip_g").unwrap().width, 48);
    // No key of that name: the first tensor in file order (clip_g's data comes first in this file).
    let first = raw.names().min_by_key(|n| raw.info(n).unwrap().start).unwrap();
    assert_eq!(load_embedding(&pair, "t5").unwrap().width, raw.info(first).unwrap().shape[1]);

    // The search: bare name, then .safetensors / .pt / .bin; subfolders too; never out of the folder.
    let folders = EmbeddingFolders::new(vec![dir.clone()]);
    assert_eq!(folders.find("tiny_pt"), Some(dir.join("tiny_pt.pt")));
    assert_eq!(folders.find("tiny_bin.bin"), Some(dir.join("tiny_bin.bin")));
    assert_eq!(folders.find("sdxl_pair"), Some(dir.join("sub/sdxl_pair.safetensors")));
    assert_eq!(folders.find("sub/sdxl_pair"), Some(dir.join("sub/sdxl_pair.safetensors")));
    assert_eq!(folders.find("nothing_here"), None);
    assert_eq!(folders.find("../embeddings/tiny_pt"), None);
    assert_eq!(folders.find(&dir.join("tiny_pt.pt").display().to_string()), None);
}

#[test]
fn a_pickle_that_calls_os_system_is_refused_unrun() {
    // The restricted unpickler builds data only; it refuses the global by name before anything could be called,
    // and ComfyUI's raw-storage fallback finds no storage in the file either.
    let e = load_embedding(&fixtures().join("evil.pt"), "clip_l").unwrap_err();
    assert!(e.contains("refused global posix.system") || e.contains("refused global os.system"), "{e}");
    assert!(e.contains("no raw storage"), "{e}");
}

/// The tiny checkpoint with CLIP's full vocabulary, rows 49406/49407 (start, end) copied from the tiny model's own
/// 998/999, as the fixture's references encode them.
fn clip_handle(dir: &Path) -> Value {
    let edit = |name: &str, data: &mut Vec<f32>| {
        if name == TOKEN_EMBEDDING {
            let w = 32;
            for (to, from) in [(49406, 998), (49407, 999)] {
                let row: Vec<f32> = data[from * w..(from + 1) * w].to_vec();
                data[to * w..(to + 1) * w].copy_from_slice(&row);
            }
        }
    };
    let ckpt = full_vocab_checkpoint_with(dir, "tiny_embeddings.safetensors", &edit);
    // f32 whatever the adapter: the references are f32 (a GPU with fast f16 would load f16 by default).
    let reg = nodes::builtin_registry_with(nodes::Settings { dtype: Some(gpu::DType::F32), ..Default::default() });
    let out = crate::common::run_kind(
        &reg,
        "CheckpointLoaderSimple",
        &[],
        &[("ckpt_name", crate::common::s(&ckpt.display().to_string()))],
    );
    out[1].clone()
}

struct Messages(Mutex<Vec<String>>);

impl graph::exec::Progress for Messages {
    fn message(&self, text: &str) {
        self.0.lock().unwrap().push(text.to_owned());
    }
}

/// A CLIPTextEncode with these embeddings folders.
fn encoder(dirs: Vec<PathBuf>) -> Arc<dyn NodeKind> {
    let settings = nodes::Settings { embedding_dirs: Box::leak(dirs.into_boxed_slice()), ..Default::default() };
    nodes::builtin_registry_with(settings).get("CLIPTextEncode").unwrap().clone()
}

fn inputs(clip: &Value, text: &str) -> graph::NodeInputs {
    let mut inp = graph::NodeInputs::default();
    inp.inputs.insert("clip".into(), clip.clone());
    inp.params.insert("text".into(), graph::ParamValue::String(text.into()));
    inp
}

/// What CLIPTextEncode gave: the conditioning's shape and values, the messages, the files recorded.
type Encoded = (Vec<usize>, Vec<f32>, Vec<String>, Vec<PathBuf>);

/// Runs CLIPTextEncode.
fn encode(gpu: &gpu::Gpu, kind: &dyn NodeKind, base: &Path, clip: &Value, text: &str) -> Encoded {
    let progress = Messages(Mutex::new(vec![]));
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let mut ctx = graph::RunContext::new("enc", base, base, "", &progress, &cancel);
    let out = kind.run(&mut ctx, &inputs(clip, text)).unwrap_or_else(|e| panic!("{text}: {e}"));
    let cond = out[0].downcast::<Conditioning>().unwrap();
    let t = &cond.entries[0].cond;
    let files = ctx.files_read.clone();
    (t.shape().to_vec(), gpu.download(t).unwrap(), progress.0.into_inner().unwrap(), files)
}

/// Looks names up in the fixture folder, as the node does.
struct Lookup(EmbeddingFolders);

impl EmbeddingLookup for Lookup {
    fn width(&self) -> usize {
        32
    }
    fn load(&mut self, name: &str) -> Result<Option<Embedding>, String> {
        match self.0.find(name) {
            None => Ok(None),
            Some(p) => load_embedding(&p, "clip_l").map(Some),
        }
    }
}

#[test]
fn prompts_with_embeddings_match_comfyui() {
    let Some(gpu) = gpu::testing::shared_gpu() else { return };
    let tmp = crate::common::temp_dir("embeddings-comfyui");
    let clip = clip_handle(&tmp);
    let handle = clip.downcast::<ClipHandle>().unwrap();
    let kind = encoder(vec![fixtures()]);
    let expected = SafeTensors::open(&fixtures().join("expected.safetensors")).unwrap();
    let tol = meta()["tolerance"]["max_abs"].as_f64().unwrap() as f32;
    let mut worst = 0f32;
    for case in meta()["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let prompt = case["prompt"].as_str().unwrap();
        // The token layout: ComfyUI's ids per position after process_tokens, and its weights by position.
        // -1 (a vector) is EMBEDDING_SLOT, u32::MAX.
        let want_ids: Vec<u32> =
            case["encoded_ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as u32).collect();
        let want_weights: Vec<f64> = case["weights"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let mut lookup = Lookup(EmbeddingFolders::new(vec![fixtures()]));
        let got = tokenize_with_embeddings(&handle.tokenizer, prompt, &mut lookup).unwrap();
        let ids: Vec<u32> = got.chunks.iter().flat_map(|c| c.ids).collect();
        assert_eq!(ids, want_ids, "{name}: ids");
        assert_eq!(
            got.chunks.iter().flat_map(|c| c.ids).filter(|&i| i == EMBEDDING_SLOT).count(),
            got.chunks.iter().map(|c| c.vectors.len()).sum::<usize>()
        );
        let weights: Vec<f64> = got.chunks.iter().flat_map(|c| c.weights).collect();
        assert_eq!(weights, want_weights, "{name}: weights");

        // The conditioning, through the node.
        let layer = case["layer"].as_i64().unwrap();
        let clip = if layer == -1 { clip.clone() } else { Value::payload(handle.with_layer(ClipLayer::Skip(2))) };
        let (shape, cond, messages, files) = encode(gpu, kind.as_ref(), &tmp, &clip, prompt);
        let want_shape: Vec<usize> =
            case["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(shape, want_shape, "{name}");
        let want = expected.f32(name, &want_shape).unwrap();
        let diff = cond.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        worst = worst.max(diff);
        assert!(diff <= tol, "{name}: max |diff| {diff} > {tol}");

        // ComfyUI's warnings, as the node says them.
        let comfy: Vec<&str> = case["warnings"].as_array().unwrap().iter().map(|w| w.as_str().unwrap()).collect();
        if comfy.is_empty() {
            assert!(messages.is_empty(), "{name}: {messages:?}");
            assert!(!files.is_empty(), "{name}: the embedding file is recorded for provenance");
        }
        if name == "missing_dropped" {
            assert_eq!(messages.len(), 1, "{messages:?}");
            assert!(
                messages[0].contains("param \"text\": embedding:nothing_here does not exist, ignoring"),
                "{messages:?}"
            );
            assert!(messages[0].contains(&fixtures().display().to_string()), "names where it looked: {messages:?}");
        }
        if name == "wide_dropped_weights_stay" {
            assert_eq!(messages.len(), 1, "{messages:?}");
            assert!(
                messages[0].contains(
                    "embedding:wide: shape mismatch when trying to apply embedding, embedding will be ignored 48 != 32"
                ),
                "{messages:?}"
            );
        }
    }
    eprintln!("embeddings: worst max |diff| against ComfyUI's float64 encodings: {worst:e}");
}

#[test]
fn an_unreadable_embedding_is_warned_about_and_dropped() {
    let Some(gpu) = gpu::testing::shared_gpu() else { return };
    let tmp = crate::common::temp_dir("embeddings-evil");
    let clip = clip_handle(&tmp);
    let kind = encoder(vec![fixtures()]);
    let (_, with, messages, _) = encode(gpu, kind.as_ref(), &tmp, &clip, "a embedding:evil red");
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert!(messages[0].contains("evil.pt") && messages[0].contains("system"), "{messages:?}");
    assert!(messages[1].contains("embedding:evil does not exist, ignoring"), "{messages:?}");
    let (_, without, _, _) = encode(gpu, kind.as_ref(), &tmp, &clip, "a red");
    assert_eq!(with, without);
}

#[test]
fn the_graph_folder_embeddings_are_found_and_the_cache_key_follows_the_file() {
    let Some(gpu) = gpu::testing::shared_gpu() else { return };
    let tmp = crate::common::temp_dir("embeddings-cache");
    let clip = clip_handle(&tmp);
    // No configured folder: the graph's own embeddings/ is searched.
    let kind = encoder(vec![]);
    let folder = tmp.join("embeddings");
    std::fs::create_dir_all(&folder).unwrap();
    let text = "a embedding:mine red";
    let fp = |k: &dyn NodeKind| {
        let progress = graph::exec::NoProgress;
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let ctx = graph::RunContext::new("enc", &tmp, &tmp, "", &progress, &cancel);
        k.fingerprint(&ctx, &inputs(&clip, text))
    };
    let missing = fp(kind.as_ref()).unwrap();
    assert!(missing.contains("mine=-"), "{missing}");
    std::fs::copy(fixtures().join("tiny_st.safetensors"), folder.join("mine.safetensors")).unwrap();
    let found = fp(kind.as_ref()).unwrap();
    assert_ne!(found, missing);
    let (_, a, messages, files) = encode(gpu, kind.as_ref(), &tmp, &clip, text);
    assert!(messages.is_empty(), "{messages:?}");
    assert_eq!(files, [std::path::absolute(folder.join("mine.safetensors")).unwrap()]);
    // Another embedding under the same name (another size): another key, another encoding.
    std::fs::copy(fixtures().join("tiny_pt.pt"), folder.join("mine.safetensors.tmp")).unwrap();
    std::fs::remove_file(folder.join("mine.safetensors")).unwrap();
    std::fs::rename(folder.join("mine.safetensors.tmp"), folder.join("mine.pt")).unwrap();
    let replaced = fp(kind.as_ref()).unwrap();
    assert_ne!(replaced, found);
    let (_, b, _, _) = encode(gpu, kind.as_ref(), &tmp, &clip, text);
    assert_ne!(a, b);
    // A prompt without embeddings has no fingerprint; the configured folder comes before the graph's.
    let progress = graph::exec::NoProgress;
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let ctx = graph::RunContext::new("enc", &tmp, &tmp, "", &progress, &cancel);
    assert_eq!(kind.fingerprint(&ctx, &inputs(&clip, "a red")), None);
    std::fs::copy(fixtures().join("tiny_bin.bin"), folder.join("tiny_st.bin")).unwrap();
    let configured = encoder(vec![fixtures()]);
    let fp = configured.fingerprint(&ctx, &inputs(&clip, "embedding:tiny_st")).unwrap();
    assert!(fp.contains(&fixtures().join("tiny_st.safetensors").display().to_string()), "{fp}");
}

#[test]
fn an_old_embedding_whose_pickle_is_refused_is_read_from_its_raw_storage() {
    // An early textual-inversion file: string_to_param is a torch.nn.ParameterDict, a class the unpickler refuses.
    // ComfyUI's safe_load_embed_zip then takes the last data/ entry of at least 768 floats, as rows of 768.
    let dir = crate::common::temp_dir("embeddings-raw");
    let pickle = b"\x80\x02ctorch.nn.modules.container\nParameterDict\n)R.";
    let vectors: Vec<f32> = (0..2 * 768).map(|i| i as f32 * 0.5 - 7.0).collect();
    let small: Vec<f32> = vec![1.0; 10];
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (a, b) = (bytes(&vectors), bytes(&small));
    let file = models::checkpoint::zip::write_stored(&[
        ("old/data.pkl", pickle.as_slice()),
        ("old/data/0", a.as_slice()),
        ("old/data/1", b.as_slice()),
    ]);
    let path = dir.join("old.pt");
    std::fs::write(&path, file).unwrap();
    let e = load_embedding(&path, "clip_l").unwrap();
    assert_eq!(e, Embedding { vectors: 2, width: 768, data: vectors });
}

/// Takes a conditioning and does nothing: a sink for a graph that only encodes.
struct CondSink(graph::NodeSchema);

impl NodeKind for CondSink {
    fn schema(&self) -> &graph::NodeSchema {
        &self.0
    }
    fn run(&self, _: &mut graph::RunContext<'_>, _: &graph::NodeInputs) -> Result<Vec<Value>, graph::NodeError> {
        Ok(vec![])
    }
}

#[test]
fn the_executor_reencodes_a_prompt_when_its_embedding_file_changes() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    use graph::exec::{Executor, NodeStatus, RunOptions};
    let tmp = crate::common::temp_dir("embeddings-exec");
    let ckpt = full_vocab_checkpoint_with(&tmp, "tiny.safetensors", &|_, _| {});
    std::fs::create_dir_all(tmp.join("embeddings")).unwrap();
    let mut reg = nodes::builtin_registry();
    let sink = graph::NodeSchema::new("CondSink", "test", "Takes a conditioning.")
        .input("c", graph::PortType::Conditioning, "It.")
        .sink();
    reg.register(Arc::new(CondSink(sink))).unwrap();
    let text = format!(
        r#"(nodes: {{
            "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": "{}" }}),
            "enc": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "a embedding:mine red" }}),
            "plain": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "a red" }}),
            "sink": (kind: "CondSink", inputs: {{ "c": "enc.conditioning" }}),
            "sink2": (kind: "CondSink", inputs: {{ "c": "plain.conditioning" }}),
        }})"#,
        ckpt.display()
    );
    let g = graph::validate(graph::parse_graph("g.ron", text.as_bytes()).unwrap(), &reg).unwrap();
    let opts = RunOptions {
        base_dir: tmp.to_path_buf(),
        out_dir: tmp.to_path_buf(),
        graph_text: String::new(),
        progress: &graph::exec::NoProgress,
        cancel: Arc::new(std::sync::atomic::AtomicBool::new(false)),
    };
    let mut exec = Executor::default();
    let encoded = |exec: &mut Executor| {
        let r = exec.run(&g, &opts);
        assert!(r.ok, "{:?}", r.errors());
        let mut ids = r.ids_with(NodeStatus::Executed);
        ids.retain(|id| id.contains("enc") || *id == "plain");
        ids.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(encoded(&mut exec), ["enc", "plain"]);
    // Nothing changed: both from the cache.
    assert!(encoded(&mut exec).is_empty());
    // The embedding appears: only the prompt naming it is encoded again; then it is cached.
    let file = tmp.join("embeddings/mine.safetensors");
    std::fs::copy(fixtures().join("tiny_st.safetensors"), &file).unwrap();
    assert_eq!(encoded(&mut exec), ["enc"]);
    assert!(encoded(&mut exec).is_empty());
    // Replaced by another embedding (another size): encoded again.
    std::fs::copy(fixtures().join("sub/sdxl_pair.safetensors"), &file).unwrap();
    assert_eq!(encoded(&mut exec), ["enc"]);
}
