//! ComfyUI workflows imported as graphs: the API and UI formats, the UI
//! format's Reroutes, primitives, notes, muted and bypassed nodes, model names
//! under a models folder, and every malformed workflow refused with the
//! workflow's own node ids.

use std::path::{Path, PathBuf};

use graph::comfy::{self, ImportOptions, MissingFiles, ModelRoots, Resolution};
use graph::{Graph, GraphErrors, ParamValue, Registry};
use serde_json::json;

use crate::common::{sdgraph_command, temp_dir};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/comfy").join(name)
}

fn opts(roots: Vec<PathBuf>, missing: MissingFiles) -> ImportOptions {
    ImportOptions { roots: ModelRoots { roots, extra: Vec::new(), base_dir: PathBuf::from("/nonexistent") }, missing }
}

fn import_json(v: &serde_json::Value, reg: &Registry) -> Result<comfy::Imported, GraphErrors> {
    comfy::import("wf.json", v.to_string().as_bytes(), reg, &opts(Vec::new(), MissingFiles::Warn))
}

fn errors(v: &serde_json::Value, reg: &Registry) -> String {
    match import_json(v, reg) {
        Ok(i) => panic!("imported, expected errors:\n{}", i.ron),
        Err(e) => e.0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"),
    }
}

/// What validation says of an imported graph that must not validate.
fn graph_errors(g: Graph, reg: &Registry) -> String {
    match graph::validate(g, reg) {
        Ok(_) => panic!("the graph validated"),
        Err(e) => e.0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"),
    }
}

/// Every node without positions, for comparing graphs.
fn shape(g: &Graph) -> Vec<graph::schema::NodeStructure> {
    g.structure()
}

fn param<'a>(g: &'a Graph, node: &str, name: &str) -> &'a ParamValue {
    &g.node(node)
        .unwrap_or_else(|| panic!("no node {node}"))
        .param(name)
        .unwrap_or_else(|| panic!("{node} has no {name}"))
        .value
}

fn input(g: &Graph, node: &str, name: &str) -> Option<String> {
    g.node(node)?.inputs.iter().find(|(k, _)| k.value == name).map(|(_, v)| v.value.to_string())
}

#[test]
fn the_api_and_ui_forms_of_one_workflow_import_to_the_same_graph_which_round_trips() {
    let reg = nodes::builtin_registry();
    let o = opts(Vec::new(), MissingFiles::Warn);
    let read = |name: &str| comfy::import(name, &std::fs::read(fixture(name)).unwrap(), &reg, &o).unwrap();
    let api = read("txt2img_api.json");
    let ui = read("txt2img_ui.json");
    assert_eq!(shape(&api.graph), shape(&ui.graph));
    let g = &ui.graph;
    assert_eq!(g.nodes.len(), 7, "notes, the Reroute, the primitive, the bypassed and the muted node are gone");
    // The primitive's value wins over the stale one in KSampler's own widgets; ints stay ints, 5 becomes 5.0.
    assert_eq!(param(g, "ksampler_3", "seed"), &ParamValue::Int(42));
    assert_eq!(param(g, "ksampler_3", "steps"), &ParamValue::Int(4));
    assert_eq!(param(g, "ksampler_3", "cfg"), &ParamValue::Float(5.0));
    assert_eq!(param(g, "ksampler_3", "sampler_name"), &ParamValue::String("euler".into()));
    // Through the Reroute, and past the bypassed LatentUpscaleBy by type.
    assert_eq!(input(g, "vae_decode_8", "vae").as_deref(), Some("checkpoint_loader_simple_4.vae"));
    assert_eq!(input(g, "ksampler_3", "latent_image").as_deref(), Some("empty_latent_image_5.latent"));
    assert_eq!(input(g, "clip_text_encode_7", "clip").as_deref(), Some("checkpoint_loader_simple_4.clip"));
    // The dict form of widgets_values.
    assert_eq!(param(g, "save_image_9", "filename_prefix"), &ParamValue::String("comfy_txt2img".into()));
    assert!(ui.warnings.iter().any(|w| w.contains("node 14 (SaveImage \"Extra copy\") is muted")), "{:?}", ui.warnings);
    // The text names each node's origin and parses back to the same graph.
    assert!(ui.ron.contains("// 6: CLIPTextEncode \"Positive\""), "{}", ui.ron);
    let again = graph::parse_graph("again.ron", ui.ron.as_bytes()).unwrap();
    assert_eq!(shape(&again), shape(g));
    let via_to_ron = graph::parse_graph("to_ron.ron", g.to_ron().as_bytes()).unwrap();
    assert_eq!(shape(&via_to_ron), shape(g));
    graph::validate(ui.graph, &reg).expect("the imported graph validates");
}

#[test]
fn kinds_sdgraph_lacks_are_all_reported_with_id_and_title_and_nothing_is_made() {
    let reg = nodes::builtin_registry();
    let wf = json!({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "FancyCustomSampler", "_meta": {"title": "My sampler"}, "inputs": {"model": ["1", 0]}},
        "3": {"class_type": "AnotherMissingNode", "inputs": {"x": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0]}},
    });
    let e = errors(&wf, &reg);
    assert!(
        e.contains("node 2 (FancyCustomSampler \"My sampler\"): sdgraph has no node kind \"FancyCustomSampler\""),
        "{e}"
    );
    assert!(e.contains("node 3 (AnotherMissingNode): sdgraph has no node kind"), "{e}");
    assert!(e.contains("2 node kind(s) missing: nothing was run"), "{e}");
    assert_eq!(e.lines().count(), 3, "{e}");
}

#[test]
fn malformed_workflows_are_refused_naming_the_workflow_node() {
    let reg = nodes::builtin_registry();
    // Not JSON; not an object; no class_type.
    let not_json = comfy::import("wf.json", b"{ nodes: ", &reg, &opts(Vec::new(), MissingFiles::Warn)).unwrap_err();
    assert!(not_json.0[0].message.contains("not valid JSON"), "{:?}", not_json.0);
    assert!(errors(&json!({"5": {"inputs": {}}}), &reg).contains("node 5: has no \"class_type\""));
    // A link to a node the workflow does not have, and to an output slot past the last.
    let wf = json!({
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["1", 7]}},
        "3": {"class_type": "VAEDecode", "inputs": {"samples": ["99", 0], "vae": ["1", 2]}},
    });
    let e = errors(&wf, &reg);
    assert!(e.contains("node 2 (CLIPTextEncode), input \"clip\": links to output slot 7 of node 1 (CheckpointLoaderSimple), which has 3 output(s)"), "{e}");
    assert!(
        e.contains("node 3 (VAEDecode), input \"samples\": links to node 99, which the workflow does not have"),
        "{e}"
    );
    // A widget value of the wrong JSON kind.
    let e = errors(&json!({"1": {"class_type": "EmptyLatentImage", "inputs": {"width": [1, 2, 3]}}}), &reg);
    assert!(
        e.contains(
            "node 1 (EmptyLatentImage), \"width\": a widget value must be a number, string or bool, found an array"
        ),
        "{e}"
    );
    // UI format: more widget values than the kind has, a link id that is not in `links`.
    let ui = json!({"nodes": [
        {"id": 3, "type": "EmptyLatentImage", "mode": 0, "widgets_values": [512, 512, 1, 9, 9]},
        {"id": 4, "type": "VAEDecode", "mode": 0, "inputs": [{"name": "samples", "type": "LATENT", "link": 77}]},
    ], "links": []});
    let e = errors(&ui, &reg);
    assert!(e.contains("node 3 (EmptyLatentImage): 5 widget values, but sdgraph's EmptyLatentImage takes 3 (width, height, batch_size)"), "{e}");
    assert!(e.contains("node 4 (VAEDecode): link 77 is not in the workflow's links"), "{e}");
}

#[test]
fn a_cycle_and_a_wrong_type_are_graph_errors_naming_the_imported_nodes() {
    let reg = nodes::builtin_registry();
    let wf = json!({
        "1": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": "wide", "height": 64, "batch_size": 1}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["4", 0]}},
    });
    let g = import_json(&wf, &reg).unwrap().graph;
    let e = graph_errors(g, &reg);
    assert!(e.contains("cycle") && e.contains("image_invert_1") && e.contains("image_invert_2"), "{e}");
    assert!(e.contains("node \"empty_latent_image_4\", param \"width\""), "{e}");
    assert!(e.contains("node \"vae_decode_5\", input \"vae\""), "{e}");
}

#[test]
fn a_bypassed_node_passes_each_output_from_its_input_of_the_same_type() {
    let reg = nodes::builtin_registry();
    // LatentUpscaleBy bypassed between the empty latent and the sampler; a muted loader leaves the decoder's vae unset.
    let ui = json!({"nodes": [
        {"id": 1, "type": "EmptyLatentImage", "mode": 0, "widgets_values": [64, 64, 1],
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": [1]}]},
        {"id": 2, "type": "LatentUpscaleBy", "mode": 4, "widgets_values": ["nearest-exact", 2],
         "inputs": [{"name": "samples", "type": "LATENT", "link": 1}], "outputs": [{"name": "LATENT", "type": "LATENT", "links": [2]}]},
        {"id": 3, "type": "LatentUpscaleBy", "mode": 0, "widgets_values": ["bilinear", 1.5],
         "inputs": [{"name": "samples", "type": "LATENT", "link": 2}], "outputs": [{"name": "LATENT", "type": "LATENT", "links": [3]}]},
        {"id": 4, "type": "VAELoaderThatIsMuted", "mode": 2, "outputs": [{"name": "VAE", "type": "VAE", "links": [4]}]},
        {"id": 5, "type": "VAEDecode", "mode": 0, "inputs": [
            {"name": "samples", "type": "LATENT", "link": 3}, {"name": "vae", "type": "VAE", "link": 4}]},
    ], "links": [[1, 1, 0, 2, 0, "LATENT"], [2, 2, 0, 3, 0, "LATENT"], [3, 3, 0, 5, 0, "LATENT"], [4, 4, 0, 5, 1, "VAE"]]});
    let imported = import_json(&ui, &reg).unwrap();
    let g = &imported.graph;
    assert!(g.node("latent_upscale_by_2").is_none());
    assert_eq!(input(g, "latent_upscale_by_3", "samples").as_deref(), Some("empty_latent_image_1.latent"));
    assert_eq!(param(g, "latent_upscale_by_3", "scale_by"), &ParamValue::Float(1.5));
    assert_eq!(input(g, "vae_decode_5", "vae"), None, "a muted source leaves the input unset");
    let e = graph_errors(imported.graph, &reg);
    assert!(e.contains("node \"vae_decode_5\"") && e.contains("vae"), "{e}");
}

#[test]
fn model_names_resolve_under_comfyui_folders_and_a_missing_one_lists_where_it_looked() {
    let root = temp_dir("comfy-models");
    std::fs::create_dir_all(root.join("checkpoints/SD1.5")).unwrap();
    std::fs::write(root.join("checkpoints/SD1.5/model.safetensors"), b"x").unwrap();
    std::fs::create_dir_all(root.join("t2i_adapter")).unwrap();
    std::fs::write(root.join("t2i_adapter/depth.safetensors"), b"x").unwrap();
    let roots =
        ModelRoots { roots: vec![root.to_path_buf()], extra: Vec::new(), base_dir: PathBuf::from("/nonexistent") };
    // A Windows user's backslash, and ComfyUI's second folder for ControlNets.
    assert_eq!(
        roots.resolve("checkpoints", "SD1.5\\model.safetensors"),
        Resolution::Found(root.join("checkpoints/SD1.5/model.safetensors"))
    );
    assert_eq!(
        roots.resolve("controlnet", "depth.safetensors"),
        Resolution::Found(root.join("t2i_adapter/depth.safetensors"))
    );
    // Never out of the folder.
    assert_eq!(roots.resolve("checkpoints", "../checkpoints/SD1.5/model.safetensors"), Resolution::Missing(Vec::new()));
    let reg = nodes::builtin_registry();
    let wf = json!({"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "SD1.5/model.safetensors"}},
                    "2": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "canny.safetensors"}}});
    let refuse = comfy::import(
        "wf.json",
        wf.to_string().as_bytes(),
        &reg,
        &opts(vec![root.to_path_buf()], MissingFiles::Refuse),
    );
    let e = refuse.unwrap_err().0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n");
    assert!(e.contains("node 2 (ControlNetLoader), \"control_net_name\": controlnet file \"canny.safetensors\" not found (looked in: "), "{e}");
    assert!(e.contains(&root.join("controlnet/canny.safetensors").display().to_string()), "{e}");
    assert!(e.contains(&root.join("t2i_adapter/canny.safetensors").display().to_string()), "{e}");
    assert_eq!(e.lines().count(), 1, "the checkpoint was found: {e}");
    let warn =
        comfy::import("wf.json", wf.to_string().as_bytes(), &reg, &opts(vec![root.to_path_buf()], MissingFiles::Warn))
            .unwrap();
    let found = root.join("checkpoints/SD1.5/model.safetensors").display().to_string();
    assert_eq!(param(&warn.graph, "checkpoint_loader_simple_1", "ckpt_name"), &ParamValue::String(found));
    assert_eq!(
        param(&warn.graph, "control_net_loader_2", "control_net_name"),
        &ParamValue::String("canny.safetensors".into())
    );
    assert!(warn.warnings.iter().any(|w| w.contains("canny.safetensors")), "{:?}", warn.warnings);
}

/// A folder laid out as ComfyUI's models folder, holding the demo model as `checkpoints/demo/sdgraph-demo.safetensors`.
fn demo_models_dir(name: &str) -> crate::common::TempDir {
    let root = temp_dir(name);
    std::fs::create_dir_all(root.join("checkpoints/demo")).unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo/sdgraph-demo.safetensors");
    std::fs::copy(demo, root.join("checkpoints/demo/sdgraph-demo.safetensors")).unwrap();
    root
}

#[test]
fn sdgraph_runs_a_comfyui_workflow_and_the_picture_it_saves_runs_again() {
    let models = demo_models_dir("comfy-run");
    let out = models.join("out");
    let run = |file: &Path, out: &Path| {
        sdgraph_command()
            .args(["run", "-q", "--models-dir"])
            .arg(&*models)
            .arg(file)
            .arg("--out-dir")
            .arg(out)
            .output()
            .unwrap()
    };
    let r = run(&fixture("txt2img_ui.json"), &out);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let png = out.join("comfy_txt2img_00001.png");
    let first = std::fs::read(&png).unwrap();
    // The picture carries the imported graph; running it again makes the same pixels.
    let again = run(&png, &models.join("again"));
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let second = std::fs::read(models.join("again/comfy_txt2img_00001.png")).unwrap();
    assert_eq!(pixels(&first), pixels(&second));
    // Without the models folder the run is refused before anything runs, saying where it looked.
    let refused = sdgraph_command().args(["run", "-q"]).arg(fixture("txt2img_api.json")).output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(
        e.contains("checkpoints file \"demo\\\\sdgraph-demo.safetensors\" not found") && e.contains("--models-dir"),
        "{e}"
    );
    // `import` writes the graph, which `run` takes like any graph file.
    let ron = models.join("imported.ron");
    let imp = sdgraph_command()
        .args(["import", "--models-dir"])
        .arg(&*models)
        .arg(fixture("txt2img_api.json"))
        .arg("-o")
        .arg(&ron)
        .output()
        .unwrap();
    assert!(imp.status.success(), "{}", String::from_utf8_lossy(&imp.stderr));
    let r =
        sdgraph_command().args(["run", "-q"]).arg(&ron).arg("--out-dir").arg(models.join("from_ron")).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(pixels(&first), pixels(&std::fs::read(models.join("from_ron/comfy_txt2img_00001.png")).unwrap()));
}

/// A ComfyUI picture: a PNG with the workflow in a `prompt` text chunk, run as it is.
#[test]
fn a_png_saved_by_comfyui_runs_its_workflow() {
    let models = demo_models_dir("comfy-png");
    let prompt = std::fs::read_to_string(fixture("txt2img_api.json")).unwrap();
    let png = models.join("ComfyUI_00001_.png");
    let bytes = nodes::png_meta::encode_png(2, 2, 3, &[0u8; 3 * 4], &[("prompt", prompt.as_str())]).unwrap();
    std::fs::write(&png, bytes).unwrap();
    let r = sdgraph_command()
        .args(["run", "-q", "--models-dir"])
        .arg(&*models)
        .arg(&png)
        .arg("--out-dir")
        .arg(models.join("out"))
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(models.join("out/comfy_txt2img_00001.png").is_file());
}

fn pixels(png: &[u8]) -> Vec<u8> {
    image::load_from_memory(png).unwrap().to_rgb8().into_raw()
}

#[test]
fn extra_model_paths_yaml_adds_folders_as_comfyui_reads_them() {
    let yaml = r#"
# A1111's folders, after the models folder
a111:
    base_path: /data/webui/
    checkpoints: models/Stable-diffusion
    loras: |
        models/Lora
        models/LyCORIS
    controlnet: "models/ControlNet"

comfyui:
    base_path: ~/ComfyUI
    is_default: true
    unet: models/unet
    vae: 'models/vae'
local:
    upscale_models: upscalers
"#;
    let got = comfy::read_extra_model_paths(yaml, Path::new("/etc/sd"), Some(Path::new("/home/me"))).unwrap();
    let f =
        |folder: &str, path: &str, first: bool| comfy::ExtraFolder { folder: folder.into(), path: path.into(), first };
    assert_eq!(
        got,
        vec![
            f("checkpoints", "/data/webui/models/Stable-diffusion", false),
            f("loras", "/data/webui/models/Lora", false),
            f("loras", "/data/webui/models/LyCORIS", false),
            f("controlnet", "/data/webui/models/ControlNet", false),
            // `unet` is ComfyUI's old name for diffusion_models; `~` is the home folder.
            f("diffusion_models", "/home/me/ComfyUI/models/unet", true),
            f("vae", "/home/me/ComfyUI/models/vae", true),
            // No base_path: relative to the file's folder.
            f("upscale_models", "/etc/sd/upscalers", false),
        ]
    );
    // is_default folders come before the models folders, the others after them.
    let roots = ModelRoots { roots: vec!["/models".into()], extra: got, base_dir: "/wf".into() };
    assert_eq!(
        roots.folders("vae"),
        vec![PathBuf::from("/home/me/ComfyUI/models/vae"), "/models/vae".into(), "/wf".into()]
    );
    assert_eq!(
        roots.folders("controlnet"),
        vec![
            PathBuf::from("/models/controlnet"),
            "/models/t2i_adapter".into(),
            "/data/webui/models/ControlNet".into(),
            "/wf".into()
        ]
    );
    let bad = comfy::read_extra_model_paths("a:\n  is_default: maybe\n", Path::new("/"), None).unwrap_err();
    assert!(bad.contains("is_default is \"maybe\""), "{bad}");
    let bad = comfy::read_extra_model_paths("  stray: x\n", Path::new("/"), None).unwrap_err();
    assert!(bad.contains("line 1") && bad.contains("belongs to no section"), "{bad}");
}

#[test]
fn the_command_finds_models_through_an_extra_model_paths_file() {
    let models = demo_models_dir("comfy-extra-paths");
    let yaml = models.join("extra_model_paths.yaml");
    // The demo model lives in checkpoints/demo/ of `models`; the file names that folder relative to itself.
    std::fs::write(&yaml, "mine:\n    checkpoints: checkpoints\n").unwrap();
    let o = sdgraph_command()
        .args(["import", "--extra-model-paths"])
        .arg(&yaml)
        .arg(fixture("txt2img_api.json"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ron = String::from_utf8(o.stdout).unwrap();
    let want = models.join("checkpoints").join("demo").join("sdgraph-demo.safetensors");
    assert!(ron.contains(&format!("{:?}", want.display().to_string())), "{ron}");
    let bad = models.join("bad.yaml");
    std::fs::write(&bad, "  oops: x\n").unwrap();
    let o = sdgraph_command()
        .args(["check", "--extra-model-paths"])
        .arg(&bad)
        .arg(fixture("txt2img_api.json"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.yaml: line 1"), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn subgraphs_are_flattened_as_the_frontend_does() {
    let reg = nodes::builtin_registry();
    let o = opts(Vec::new(), MissingFiles::Warn);
    let text = std::fs::read_to_string(fixture("subgraph_ui.json")).unwrap();
    let sub = comfy::import("subgraph_ui.json", text.as_bytes(), &reg, &o).unwrap();
    let api =
        comfy::import("txt2img_api.json", &std::fs::read(fixture("txt2img_api.json")).unwrap(), &reg, &o).unwrap();
    // The same graph as the API form, but for the inner encoders' ids (`<instance>:<inner>`).
    let renamed = |g: &Graph| {
        let text = g
            .to_ron()
            .replace("clip_text_encode_20_1", "clip_text_encode_6")
            .replace("clip_text_encode_20_2", "clip_text_encode_7");
        let mut s = shape(&graph::parse_graph("g.ron", text.as_bytes()).unwrap());
        s.sort_by(|a, b| a.0.cmp(&b.0));
        s
    };
    assert_eq!(renamed(&sub.graph), renamed(&api.graph));
    // The promoted widget's value is the instance's, not the inner node's stale one; the clip comes in through
    // the subgraph's input, the conditionings out through its outputs.
    assert_eq!(
        param(&sub.graph, "clip_text_encode_20_1", "text"),
        &ParamValue::String("a red circle on a blue background, top left".into())
    );
    assert_eq!(input(&sub.graph, "ksampler_3", "negative").as_deref(), Some("clip_text_encode_20_2.conditioning"));
    assert!(sub.ron.contains("// 20:1: CLIPTextEncode \"Positive\""), "{}", sub.ron);
    // A muted instance runs nothing inside it, and what it fed is unset.
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let inst = json["nodes"].as_array_mut().unwrap().iter_mut().find(|n| n["id"] == 20).unwrap();
    inst["mode"] = json!(2);
    let muted = import_json(&json, &reg).unwrap();
    assert!(muted.graph.nodes.iter().all(|n| !n.id.value.starts_with("clip_text_encode_20")));
    assert_eq!(input(&muted.graph, "ksampler_3", "positive"), None);
    // A definition that uses itself is refused, not followed forever.
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let id = json["definitions"]["subgraphs"][0]["id"].clone();
    json["definitions"]["subgraphs"][0]["nodes"].as_array_mut().unwrap().push(json!({"id": 9, "type": id, "mode": 0}));
    let e = errors(&json, &reg);
    assert!(e.contains("subgraphs nested more than 16 deep"), "{e}");
}
