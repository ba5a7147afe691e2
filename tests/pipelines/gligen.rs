//! GLIGENLoader and GLIGENTextBoxApply on the demo model with its random-weight stand-in GLIGEN
//! (assets/demo/sdgraph-demo-gligen-random.safetensors): the box as ComfyUI records it (the CLIP's pooled output of
//! the last layer at the first end-of-text token, the box's pixels // 8; boxes chain), KSampler runs the GLIGEN
//! for the entries that carry boxes, and bad input (a file that is not a GLIGEN, a GLIGEN for another model, a
//! box outside the picture) is an error naming the node's input.

use std::path::{Path, PathBuf};

use graph::{ParamValue, Value};
use models::prompt_weights::tokenize_with_weights;
use nodes::payload::{ClipHandle, Conditioning};

use crate::common::{call_kind, int, latent_of, one, run_kind, s};

fn demo(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo").join(name).display().to_string()
}

fn fixture_gligen() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gligen/gligen.safetensors")
}

struct Demo {
    reg: graph::Registry,
    model: Value,
    clip: Value,
    gligen: Value,
}

fn setup() -> Option<Demo> {
    gpu::testing::shared_gpu()?;
    let reg = nodes::builtin_registry();
    let ckpt = run_kind(&reg, "CheckpointLoaderSimple", &[], &[("ckpt_name", s(&demo("sdgraph-demo.safetensors")))]);
    let gligen = one(&reg, "GLIGENLoader", &[], &[("gligen_name", s(&demo("sdgraph-demo-gligen-random.safetensors")))]);
    Some(Demo { model: ckpt[0].clone(), clip: ckpt[1].clone(), gligen, reg })
}

impl Demo {
    fn encode(&self, text: &str) -> Value {
        one(&self.reg, "CLIPTextEncode", &[("clip", self.clip.clone())], &[("text", s(text))])
    }

    fn text_box(
        &self,
        to: &Value,
        clip: &Value,
        text: &str,
        (w, h, x, y): (i64, i64, i64, i64),
    ) -> Result<Value, String> {
        let inputs =
            [("conditioning_to", to.clone()), ("clip", clip.clone()), ("gligen_textbox_model", self.gligen.clone())];
        let params = [("text", s(text)), ("width", int(w)), ("height", int(h)), ("x", int(x)), ("y", int(y))];
        call_kind(&self.reg, "GLIGENTextBoxApply", &inputs, &params).map(|mut v| v.remove(0))
    }

    fn sample(&self, positive: &Value) -> Result<Vec<f32>, String> {
        let empty = one(&self.reg, "EmptyLatentImage", &[], &[("width", int(64)), ("height", int(64))]);
        let neg = self.encode("");
        let inputs =
            [("model", self.model.clone()), ("positive", positive.clone()), ("negative", neg), ("latent_image", empty)];
        let params = [
            ("seed", int(5)),
            ("steps", int(3)),
            ("cfg", ParamValue::Float(3.0)),
            ("sampler_name", s("euler")),
            ("scheduler", s("normal")),
        ];
        call_kind(&self.reg, "KSampler", &inputs, &params).map(|v| latent_of(&v[0]).samples.clone())
    }
}

fn conditioning(v: &Value) -> std::sync::Arc<Conditioning> {
    v.downcast::<Conditioning>().expect("a conditioning")
}

/// The CLIP's last hidden state at the first end-of-text token of `text`, computed here from every hidden state.
fn pooled_by_hand(clip: &ClipHandle, text: &str) -> Vec<f32> {
    let gpu = gpu::testing::shared_gpu().unwrap();
    let ids = [tokenize_with_weights(&clip.tokenizer, text).unwrap().chunks[0].ids];
    let eos = ids[0].iter().position(|&t| t == models::tokenizer::END_OF_TEXT).unwrap();
    let all = clip.model.forward_with_intermediates(gpu, &ids).unwrap();
    let h = gpu.download(&all.last_hidden_state).unwrap();
    let c = clip.model.config.hidden_size;
    h[eos * c..(eos + 1) * c].to_vec()
}

#[test]
fn gligen_text_box_apply_records_the_pooled_text_and_the_box_in_latent_pixels() {
    let Some(d) = setup() else { return };
    let two = one(
        &d.reg,
        "ConditioningCombine",
        &[("conditioning_1", d.encode("a red square")), ("conditioning_2", d.encode("a blue circle"))],
        &[],
    );
    let a = d.text_box(&two, &d.clip, "red square", (100, 60, 17, 33)).unwrap();
    let clip = d.clip.downcast::<ClipHandle>().unwrap();
    let want = pooled_by_hand(&clip, "red square");
    let ca = conditioning(&a);
    assert_eq!(ca.entries.len(), 2);
    for e in &ca.entries {
        let g = e.gligen.as_ref().expect("every entry gets the box");
        assert_eq!(g.boxes.len(), 1);
        let b = &g.boxes[0];
        // ComfyUI: (cond_pooled, height // 8, width // 8, y // 8, x // 8).
        assert_eq!((b.h, b.w, b.y, b.x), (7, 12, 4, 2));
        assert_eq!(b.embedding, want, "the pooled output of the last layer at the end-of-text token");
        // set_position on the 64x64 picture's 8x8 latent: x / w, y / h, (x + bw) / w, (y + bh) / h.
        assert_eq!(b.corners(8, 8), [0.25, 0.5, 1.75, 1.375]);
    }
    // The pooled output is the last layer's whatever CLIPSetLastLayer chose, as in ComfyUI.
    let skip = one(&d.reg, "CLIPSetLastLayer", &[("clip", d.clip.clone())], &[("stop_at_clip_layer", int(-2))]);
    let a2 = d.text_box(&two, &skip, "red square", (100, 60, 17, 33)).unwrap();
    assert_eq!(conditioning(&a2).entries[0].gligen.as_ref().unwrap().boxes[0].embedding, want);
    // A second box is appended to the first.
    let b = d.text_box(&a, &d.clip, "blue circle", (8, 16, 0, 56)).unwrap();
    let cb = conditioning(&b);
    let boxes = &cb.entries[1].gligen.as_ref().unwrap().boxes;
    assert_eq!(boxes.len(), 2);
    assert_eq!(boxes[0], ca.entries[1].gligen.as_ref().unwrap().boxes[0]);
    assert_eq!((boxes[1].h, boxes[1].w, boxes[1].y, boxes[1].x), (2, 1, 7, 0));
    assert_eq!(boxes[1].embedding, pooled_by_hand(&clip, "blue circle"));
    // The conditioning it was given is unchanged.
    assert!(conditioning(&two).entries.iter().all(|e| e.gligen.is_none()));
}

#[test]
fn gligen_boxes_steer_ksampler_and_bad_input_is_refused() {
    let Some(d) = setup() else { return };
    let pos = d.encode("a yellow circle on a blue background, top left");
    let plain = d.sample(&pos).unwrap();
    let boxed = d.text_box(&pos, &d.clip, "yellow circle", (32, 32, 0, 0)).unwrap();
    let with = d.sample(&boxed).unwrap();
    let moved = plain.iter().zip(&with).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    eprintln!("GLIGEN (random stand-in, gates tanh 0.2) moves the 3-step latent by {moved:.3} at most");
    assert!(moved > 1e-2, "the boxes changed nothing: {moved}");
    assert_eq!(d.sample(&boxed).unwrap(), with, "the same boxes give the same latent");

    // A box that starts outside the 64x64 picture.
    let outside = d.text_box(&pos, &d.clip, "yellow circle", (32, 32, 64, 0)).unwrap();
    let e = d.sample(&outside).unwrap_err();
    assert!(e.contains("input \"positive\"") && e.contains("outside the 64x64"), "{e}");
    // A file that is not a GLIGEN.
    let e =
        call_kind(&d.reg, "GLIGENLoader", &[], &[("gligen_name", s(&demo("sdgraph-demo.safetensors")))]).unwrap_err();
    assert!(e.contains("param \"gligen_name\"") && e.contains("not a GLIGEN model"), "{e}");
    // A GLIGEN for another model (the tiny test UNet's: 8 and 16 channels where the demo has 32 and 64).
    let other = one(&d.reg, "GLIGENLoader", &[], &[("gligen_name", s(&fixture_gligen().display().to_string()))]);
    let inputs = [("conditioning_to", pos.clone()), ("clip", d.clip.clone()), ("gligen_textbox_model", other)];
    let bad = one(&d.reg, "GLIGENTextBoxApply", &inputs, &[("text", s("yellow circle"))]);
    let e = d.sample(&bad).unwrap_err();
    assert!(e.contains("GLIGEN block 0 takes 8 channels") && e.contains("another model"), "{e}");
}

/// The UNet predictor's parts for `pos` (and `neg`) on a 64x64 picture's latent at sigma 5.
fn parts(d: &Demo, pos: &Value, neg: Option<&Value>) -> models::sampling::samplers::NetOutput {
    use models::sampling::samplers::NoisePredictor;
    let gpu = gpu::testing::shared_gpu().unwrap();
    let model = d.model.downcast::<nodes::payload::ModelHandle>().unwrap();
    let (pos, neg) = (conditioning(pos), neg.map(conditioning));
    let sigmas = models::sampling::schedulers::ModelSigmas::sd15();
    let shape = [1, 4, 8, 8];
    let mut p = nodes::unet_predictor::UnetPredictor::bind(gpu, &model, &sigmas, &pos, neg.as_deref(), shape).unwrap();
    let x = gpu::testing::random(256, 9, -1.0, 1.0);
    p.predict(&x, 500.0, 5.0, neg.is_some()).unwrap()
}

#[test]
fn gligen_runs_only_for_the_entries_that_carry_boxes() {
    let Some(d) = setup() else { return };
    let pos = d.encode("a red square on a white background, center");
    let neg = d.encode("");
    let boxed = d.text_box(&pos, &d.clip, "red square", (32, 32, 16, 16)).unwrap();
    let both = parts(&d, &boxed, Some(&neg));
    let plain = parts(&d, &pos, Some(&neg));
    let alone = parts(&d, &boxed, None);
    let out = |o: &models::sampling::samplers::NetOutput, uncond: bool| {
        let side = if uncond { o.uncond.as_ref().unwrap() } else { &o.cond };
        side[0].out.clone()
    };
    // The negative prompt (no boxes) is not run with the positive's GLIGEN, though both share one latent size and
    // text length and would otherwise be batched into one call.
    assert_eq!(out(&both, true), out(&plain, true));
    // The positive with boxes is the same batched beside the negative or run alone, and differs from the plain one.
    assert_eq!(out(&both, false), out(&alone, false));
    assert_ne!(out(&both, false), out(&plain, false));
}
