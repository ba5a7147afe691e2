//! The example graphs: each one is valid, together they use every built-in
//! node kind, so no kind goes undocumented by example, and each runs as
//! shipped and shows what its header says.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use graph::exec::{Executor, NoProgress, RunOptions};

use crate::demo_model::{COLOURS, nearest_colour};

#[test]
fn every_builtin_kind_is_used_by_an_example_graph() {
    let mut reg = nodes::builtin_registry();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // graphs/plugin_demo.ron uses the example Lua plugins, which must then be used too.
    let limits = plugin::SandboxLimits::default();
    plugin::load_plugins(&[root.join("plugins")], &mut reg, &limits).unwrap_or_else(|e| panic!("{e:?}"));
    let dir = root.join("graphs");
    let mut used = BTreeSet::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "ron") {
            continue;
        }
        files += 1;
        let bytes = std::fs::read(&path).unwrap();
        let g = graph::parse_graph(&path.display().to_string(), &bytes).unwrap();
        let g = graph::validate(g, &reg).unwrap_or_else(|e| panic!("{e}"));
        used.extend(g.nodes.iter().map(|n| n.kind.schema().kind.clone()));
    }
    assert!(files > 0, "no graphs found");
    let unused: Vec<&str> = reg.names().filter(|k| !used.contains(*k)).collect();
    assert!(unused.is_empty(), "kinds with no example graph: {unused:?}");
}

/// Keeps the two latents it is given (`a`, `b`), to compare a shipped graph's latents after the run.
struct LatentProbe(graph::NodeSchema, Arc<Mutex<Vec<Arc<nodes::payload::Latent>>>>);

impl graph::NodeKind for LatentProbe {
    fn schema(&self) -> &graph::NodeSchema {
        &self.0
    }
    fn run(
        &self,
        _: &mut graph::RunContext<'_>,
        inputs: &graph::NodeInputs,
    ) -> Result<Vec<graph::Value>, graph::NodeError> {
        *self.1.lock().unwrap() = vec![inputs.get("a")?, inputs.get("b")?];
        Ok(vec![])
    }
}

/// Every graph in `graphs/`, run as shipped (no overrides, the example plugins loaded), in one executor so the demo
/// model loads once; returns each graph's pictures by file name (`prefix_00001.png`, under subfolders as written).
/// For the inpainting graphs, the sampled and the encoded latent of the shipped run are kept in `latents` (a second
/// run of the graph with a probe added, which takes every shipped node from the cache).
fn run_every_graph_as_shipped(latents: &mut BTreeMap<String, Vec<Arc<nodes::payload::Latent>>>) -> Shipped {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut reg = nodes::builtin_registry();
    plugin::load_plugins(&[root.join("plugins")], &mut reg, &plugin::SandboxLimits::default()).unwrap();
    let probed = Arc::new(Mutex::new(vec![]));
    let probe = graph::NodeSchema::new("LatentProbe", "test", "Keeps two latents.")
        .input("a", graph::PortType::Latent, "One.")
        .input("b", graph::PortType::Latent, "The other.")
        .sink();
    reg.register(Arc::new(LatentProbe(probe, probed.clone()))).unwrap();
    let dir = crate::common::temp_dir("every-graph");
    let mut exec = Executor::default();
    let mut pictures = BTreeMap::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join("graphs")).unwrap().map(|e| e.unwrap().path()).collect();
    paths.retain(|p| p.extension().is_some_and(|e| e == "ron"));
    paths.sort();
    for path in paths {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let g = graph::parse_graph(&path.display().to_string(), text.as_bytes()).unwrap();
        let g = graph::validate(g, &reg).unwrap_or_else(|e| panic!("{e}"));
        let out = dir.join(&name);
        let opts = RunOptions {
            base_dir: root.join("graphs"),
            out_dir: out.clone(),
            graph_text: text,
            progress: &NoProgress,
            cancel: Arc::new(AtomicBool::new(false)),
        };
        let t = std::time::Instant::now();
        let r = exec.run(&g, &opts);
        eprintln!("{name}: {:.1} s", t.elapsed().as_secs_f64());
        assert!(r.ok, "graphs/{name}.ron as shipped: {:?}", r.errors());
        let written: Vec<&PathBuf> = r.nodes.iter().flat_map(|n| &n.outputs).collect();
        let saves = g.nodes.iter().filter(|n| n.kind.schema().kind == "SaveImage").count();
        assert!(written.len() >= saves, "graphs/{name}.ron: {saves} SaveImage nodes wrote {written:?}");
        let pics = written
            .iter()
            .map(|p| (p.strip_prefix(&out).unwrap().display().to_string(), image::open(p).unwrap().to_rgb8()))
            .collect();
        if name.starts_with("inpaint") {
            let probe = r#"        "probe": (kind: "LatentProbe", inputs: { "a": "sample.latent", "b": "encode.latent" }),
    },
)"#;
            let text =
                opts.graph_text.trim_end().strip_suffix("},\n)").expect("the graph ends its nodes map").to_string();
            let g = graph::parse_graph("probed.ron", (text + probe.trim_start_matches(' ')).as_bytes()).unwrap();
            let r = exec.run(&graph::validate(g, &reg).unwrap(), &opts);
            assert!(r.ok && r.ids_with(graph::exec::NodeStatus::Executed) == ["probe"], "{:?}", r.nodes);
            latents.insert(name.clone(), std::mem::take(&mut *probed.lock().unwrap()));
        }
        pictures.insert(name, pics);
    }
    pictures
}

type Shipped = BTreeMap<String, BTreeMap<String, image::RgbImage>>;

/// Mean absolute difference per channel value over the pixels `keep` selects.
fn mean_diff(a: &image::RgbImage, b: &image::RgbImage, keep: impl Fn(u32, u32) -> bool) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let (mut sum, mut n) = (0.0, 0usize);
    for (x, y, p) in a.enumerate_pixels() {
        if keep(x, y) {
            let q = b.get_pixel(x, y);
            sum += p.0.iter().zip(q.0).map(|(u, v)| (f64::from(*u) - f64::from(v)).abs()).sum::<f64>();
            n += 3;
        }
    }
    sum / n as f64
}

fn demo_input(name: &str) -> image::RgbImage {
    image::open(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo").join(name)).unwrap().to_rgb8()
}

/// `assets/demo/<name>` through the demo model's VAE and back: what an inpainting graph keeps outside its mask
/// (the latent there is the encoded picture, bit for bit).
fn demo_round_trip(name: &str) -> image::RgbImage {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = format!(
        r#"(nodes: {{
            "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": "../assets/demo/sdgraph-demo.safetensors" }}),
            "load": (kind: "LoadImage", params: {{ "image": "../assets/demo/{name}" }}),
            "enc": (kind: "VAEEncode", inputs: {{ "pixels": "load.image", "vae": "ckpt.vae" }}),
            "dec": (kind: "VAEDecode", inputs: {{ "samples": "enc.latent", "vae": "ckpt.vae" }}),
            "save": (kind: "SaveImage", inputs: {{ "images": "dec.image" }}, params: {{ "filename_prefix": "rt" }}),
        }})"#
    );
    let g = crate::common::validate_str(&text, &nodes::builtin_registry()).unwrap();
    let out = crate::common::temp_dir("round-trip");
    let opts = RunOptions {
        base_dir: root.join("graphs"),
        out_dir: out.to_path_buf(),
        graph_text: text,
        progress: &NoProgress,
        cancel: Arc::new(AtomicBool::new(false)),
    };
    let r = Executor::default().run(&g, &opts);
    assert!(r.ok, "{:?}", r.errors());
    image::open(out.join("rt_00001.png")).unwrap().to_rgb8()
}

/// A newcomer learns the product from `graphs/`: each example runs as shipped on a fresh machine (the demo models,
/// no downloads) and shows what its header says. img2img keeps the input's layout; inpainting changes the masked
/// quadrant and keeps the rest (away from the few pixels the decoder blends across the edge); the hires and tiled
/// passes make their larger pictures.
/// The share of `pic`'s pixels where `keep` holds whose nearest demo palette colour is `colour` (the tiny VAE
/// shifts shades, not which of its six colours a pixel is).
fn colour_share(pic: &image::RgbImage, colour: &str, keep: &dyn Fn(u32, u32) -> bool) -> f64 {
    let want = COLOURS.iter().position(|(name, _)| *name == colour).unwrap();
    let pixels: Vec<usize> =
        pic.enumerate_pixels().filter(|(x, y, _)| keep(*x, *y)).map(|(_, _, p)| nearest_colour(p.0)).collect();
    pixels.iter().filter(|&&c| c == want).count() as f64 / pixels.len() as f64
}

#[test]
fn every_example_graph_runs_as_shipped_and_shows_what_it_says() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let mut latents = BTreeMap::new();
    let pictures = run_every_graph_as_shipped(&mut latents);
    let one = |graph: &str, file: &str| -> &image::RgbImage {
        pictures[graph].get(file).unwrap_or_else(|| panic!("{graph}: no {file} in {:?}", pictures[graph].keys()))
    };
    // img2img: the yellow background stays where it was (the corners), the middle still holds a green shape.
    let (square, img2img) = (demo_input("green_square.png"), one("img2img", "img2img_00001.png"));
    let corners = |x: u32, y: u32| !(12..52).contains(&x) && !(12..52).contains(&y);
    let background = mean_diff(img2img, &square, corners);
    let middle = |x: u32, y: u32| (26..38).contains(&x) && (26..38).contains(&y);
    let green =
        img2img.enumerate_pixels().filter(|(x, y, _)| middle(*x, *y)).filter(|(_, _, p)| p[1] > p[0] && p[1] > p[2]);
    eprintln!(
        "img2img: corners differ by {background:.1} levels, {} green pixels in the middle",
        green.clone().count()
    );
    assert!(background < 20.0, "img2img lost the background: {background:.1}");
    assert!(green.count() > 72, "img2img lost the shape in the middle");
    // Inpainting: the sampler changes the latent in the masked quadrant and keeps the rest of the encoded picture bit
    // for bit (latent columns and rows 5..8 of 8; row/column 4 holds the resized mask's edge). The pictures change
    // most in that quadrant: the tiny VAE's decoder mixes the whole 8x8 latent (its mid-block attention), so the
    // rest moves too, less.
    // inpaint_model: InpaintModelConditioning on the plain demo model, which only takes its noise mask.
    for graph in ["inpaint", "inpaint_mask", "inpaint_model"] {
        let [sampled, encoded] = &latents[graph][..] else { panic!("{graph}: no latents probed") };
        let [_, c, h, w] = sampled.shape;
        let (mut kept, mut changed) = (0usize, 0.0f64);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let i = (ch * h + y) * w + x;
                    if x > w / 2 || y > h / 2 {
                        assert_eq!(sampled.samples[i], encoded.samples[i], "{graph}: latent ({ch}, {y}, {x}) changed");
                        kept += 1;
                    } else if x < w / 2 && y < h / 2 {
                        changed += f64::from((sampled.samples[i] - encoded.samples[i]).abs());
                    }
                }
            }
        }
        let changed = changed / (c * h * w / 4) as f64;
        eprintln!(
            "{graph}: {kept} latent values kept bit for bit, the masked quadrant moved by {changed:.3} on average"
        );
        assert!(changed > 0.1, "{graph}: the masked quadrant's latent barely changed ({changed:.3})");
        let input = if graph == "inpaint" { "inpaint_hole.png" } else { "green_square.png" };
        let (got, round_trip) = (one(graph, &format!("{graph}_00001.png")), demo_round_trip(input));
        let inside = mean_diff(got, &round_trip, |x, y| x < 24 && y < 24);
        let outside = mean_diff(got, &round_trip, |x, y| x >= 40 || y >= 40);
        eprintln!("{graph}: pictures: the masked quadrant changed by {inside:.1} levels, the rest by {outside:.1}");
        assert!(inside > 2.0 * outside, "{graph}: inside {inside:.1} levels, outside {outside:.1}");
    }
    assert_eq!(one("hires_fix", "hires_fix_00001.png").dimensions(), (128, 128));
    let tiled = one("vae_tiled", "vae_tiled_00001.png");
    assert_eq!(tiled.dimensions(), (128, 128));
    // The tiled passes keep the layout: yellow around (the corners), green in the middle, by the demo palette's
    // nearest colour (the tiny VAE shifts shades, not which of its six colours a pixel is).
    let share = |colour: &str, keep: &dyn Fn(u32, u32) -> bool| colour_share(tiled, colour, keep);
    let (yellow, green) = (
        share("yellow", &|x, y| !(24..104).contains(&x) && !(24..104).contains(&y)),
        share("green", &|x, y| (56..72).contains(&x) && (56..72).contains(&y)),
    );
    eprintln!("vae_tiled: {:.0}% of the corners yellow, {:.0}% of the middle green", 100.0 * yellow, 100.0 * green);
    assert!(yellow > 0.9 && green > 0.5, "vae_tiled lost the layout: yellow {yellow:.2}, green {green:.2}");
    assert_eq!(pictures["plugin_demo"].len(), 2, "{:?}", pictures["plugin_demo"].keys());
    // separate_files: the UNet, text encoder and VAE from three loaders still draw the prompt's yellow square at
    // the bottom right on blue.
    let parts = one("separate_files", "separate_files_00001.png");
    let share = |colour: &str, keep: &dyn Fn(u32, u32) -> bool| colour_share(parts, colour, keep);
    let (yellow, blue) = (share("yellow", &|x, y| x >= 32 && y >= 32), share("blue", &|x, y| x < 32 && y < 32));
    eprintln!(
        "separate_files: {:.0}% of the bottom right yellow, {:.0}% of the top left blue",
        100.0 * yellow,
        100.0 * blue
    );
    assert!(yellow > 0.2 && blue > 0.9, "separate_files lost the prompt: yellow {yellow:.2}, blue {blue:.2}");
}
