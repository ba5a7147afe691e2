//! PreviewImage from the command line: pictures go to `sdgraph-previews` in the system's
//! temp folder (here a test folder, through TMPDIR), never the output folder, and the run
//! report lists them under "previews", apart from "outputs". Also the new kinds' listing.

use std::path::{Path, PathBuf};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn pngs_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "png")).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[cfg(unix)]
#[test]
fn preview_image_writes_to_the_temp_previews_folder_and_reports_them_apart() {
    let dir = crate::common::temp_dir("preview-image");
    let (tmp, out) = (dir.join("tmp"), dir.join("out"));
    std::fs::create_dir_all(&tmp).unwrap();
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/sample.png");
    let graph = dir.join("look.ron");
    std::fs::write(
        &graph,
        format!(
            r#"(nodes: {{
                "load": (kind: "LoadImage", params: {{ "image": {sample:?} }}),
                "small": (kind: "ImageScaleToTotalPixels", inputs: {{ "image": "load.image" }},
                    params: {{ "upscale_method": "area", "megapixels": 0.01, "resolution_steps": 8 }}),
                "look": (kind: "PreviewImage", inputs: {{ "images": "small.image" }}),
                "keep": (kind: "SaveImage", inputs: {{ "images": "small.image" }}, params: {{ "filename_prefix": "keep" }}),
            }})"#
        ),
    )
    .unwrap();
    let run = |json: bool| {
        let mut c = crate::common::sdgraph_command();
        c.args(["run", graph.to_str().unwrap(), "--out-dir", out.to_str().unwrap()]);
        if json {
            c.arg("--json");
        }
        c.env("TMPDIR", &tmp).output().expect("sdgraph runs")
    };
    let previews = tmp.join("sdgraph-previews");

    let o = run(true);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let first = previews.join("sdgraph_temp_look_00001.png");
    let saved = out.join("keep_00001.png");
    assert_eq!(v["previews"], serde_json::json!([first.to_str().unwrap()]));
    assert_eq!(v["outputs"], serde_json::json!([saved.to_str().unwrap()]));
    let look = v["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "look").unwrap();
    assert_eq!((look["kind"].as_str(), look["outputs"].as_array().map(Vec::len)), (Some("PreviewImage"), Some(0)));
    assert_eq!(look["previews"][0], first.to_str().unwrap());
    // Nothing of the preview in the output folder; the preview is the saved picture, 160x120 -> 120x88.
    assert_eq!(pngs_in(&out), std::slice::from_ref(&saved));
    assert_eq!(pngs_in(&previews), std::slice::from_ref(&first));
    let (p, s) = (image::open(&first).unwrap().to_rgb8(), image::open(&saved).unwrap().to_rgb8());
    assert_eq!(p.dimensions(), (120, 88));
    assert_eq!(p, s);
    // It carries the graph, as ComfyUI's previews carry the prompt.
    let (embedded, _) = nodes::png_meta::embedded_graph(&std::fs::read(&first).unwrap()).unwrap().unwrap();
    assert!(embedded.contains("PreviewImage"), "{embedded}");

    // Again, without --json: a new preview (the first kept), named on stderr; stdout lists the outputs only.
    let o = run(false);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let second = previews.join("sdgraph_temp_look_00002.png");
    assert_eq!(pngs_in(&previews), [first.clone(), second.clone()]);
    assert!(text(&o.stderr).contains(&format!("preview: {}", second.display())), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), out.join("keep_00002.png").to_str().unwrap());
}

#[test]
fn the_new_kinds_are_listed_with_comfyuis_names_defaults_and_ranges() {
    let sdgraph = |args: &[&str]| crate::common::sdgraph_command().args(args).output().expect("sdgraph runs");
    let o = sdgraph(&["nodes"]);
    let list = text(&o.stdout);
    for k in ["CLIPSetLastLayer", "VAELoader", "PreviewImage", "ImageScaleToTotalPixels"] {
        assert!(list.lines().any(|l| l.starts_with(k)), "{k} missing from:\n{list}");
    }
    let json = |kind: &str| -> serde_json::Value {
        serde_json::from_slice(&sdgraph(&["nodes", kind, "--json"]).stdout).unwrap()
    };
    let names = |v: &serde_json::Value, key: &str| -> Vec<String> {
        v[key].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
    };
    let v = json("ImageScaleToTotalPixels");
    assert_eq!(v["category"], "image/upscaling");
    assert_eq!(names(&v, "inputs"), ["image"]);
    assert_eq!(names(&v, "params"), ["upscale_method", "megapixels", "resolution_steps"]);
    assert_eq!(
        (&v["params"][1]["min"], &v["params"][1]["max"], &v["params"][1]["default"]),
        (&0.01.into(), &16.0.into(), &1.0.into())
    );
    assert_eq!(
        (&v["params"][2]["min"], &v["params"][2]["max"], &v["params"][2]["default"]),
        (&1.into(), &256.into(), &1.into())
    );
    let v = json("CLIPSetLastLayer");
    assert_eq!(
        (names(&v, "inputs"), names(&v, "params"), names(&v, "outputs")),
        (vec!["clip".into()], vec!["stop_at_clip_layer".into()], vec!["clip".into()])
    );
    assert_eq!(
        (&v["params"][0]["min"], &v["params"][0]["max"], &v["params"][0]["default"]),
        (&(-24).into(), &(-1).into(), &(-1).into())
    );
    let v = json("VAELoader");
    assert_eq!((names(&v, "params"), names(&v, "outputs")), (vec!["vae_name".into()], vec!["vae".into()]));
    let v = json("PreviewImage");
    assert_eq!((names(&v, "inputs"), v["outputs"].as_array().unwrap().len()), (vec!["images".into()], 0));
}
