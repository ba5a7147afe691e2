//! Prompt weighting as ComfyUI reads it (models::prompt_weights): the parser, the per-position token weights and
//! chunking, and the weighting of the encoder output on the tiny fixture model.
//!
//! Expected values are derived by hand from ComfyUI's comfy/sd1_clip.py (Comfy-Org/ComfyUI@4bd7a40:
//! `parse_parentheses`, `token_weights`, `tokenize_with_weights`, `encode_token_weights`); each case says how.
//! The Python `float()` cases were checked with CPython 3.11.

use std::path::Path;
use std::sync::Mutex;

use crate::common::sd_tiny::full_vocab_checkpoint;
use gpu::Gpu;
use models::clip::ClipLayer;
use models::prompt_weights::{
    Segment, WeightedChunk, apply_token_weights, empty_tokens, encode_token_weights, parse_parentheses, parse_prompt,
    python_float, tokenize_with_weights,
};
use models::tokenizer::{CONTEXT_LENGTH, ClipTokenizer, END_OF_TEXT, PAD, START_OF_TEXT};
use nodes::payload::ClipHandle;

fn segs(text: &str) -> Vec<(String, f64)> {
    parse_prompt(text).unwrap().into_iter().map(|Segment { text, weight }| (text, weight)).collect()
}

fn s(text: &str, w: f64) -> (String, f64) {
    (text.to_owned(), w)
}

#[test]
fn plain_text_and_emphasis() {
    assert_eq!(segs(""), []);
    assert_eq!(segs("a red fox"), [s("a red fox", 1.0)]);
    // `(x)`: weight *= 1.1.
    assert_eq!(segs("(fox)"), [s("fox", 1.1)]);
    // Nesting multiplies in f64: 1.0 * 1.1 * 1.1 and * 1.1 again, as Python prints them.
    assert_eq!(segs("((fox))"), [s("fox", 1.2100000000000002)]);
    assert_eq!(segs("(((fox)))"), [s("fox", 1.3310000000000004)]);
    assert_eq!(
        segs("a (red) ((fox)) b"),
        [s("a ", 1.0), s("red", 1.1), s(" ", 1.0), s("fox", 1.2100000000000002), s(" b", 1.0)]
    );
    // `()` holds nothing; `( )` holds a space at 1.1.
    assert_eq!(segs("a()b"), [s("a", 1.0), s("b", 1.0)]);
    assert_eq!(segs("( )"), [s(" ", 1.1)]);
}

#[test]
fn explicit_weights() {
    assert_eq!(segs("a (red:1.3) fox"), [s("a ", 1.0), s("red", 1.3), s(" fox", 1.0)]);
    // float() grammar: leading dot, trailing dot, spaces around, sign, exponent, underscores, full-width digits.
    assert_eq!(segs("(red:.5)"), [s("red", 0.5)]);
    assert_eq!(segs("(red:2.)"), [s("red", 2.0)]);
    assert_eq!(segs("(red: 1.25 )"), [s("red", 1.25)]);
    assert_eq!(segs("(red:-1)"), [s("red", -1.0)]);
    assert_eq!(segs("(red:+0.5)"), [s("red", 0.5)]);
    assert_eq!(segs("(red:1e-1)"), [s("red", 0.1)]);
    assert_eq!(segs("(red:1_5)"), [s("red", 15.0)]);
    assert_eq!(segs("(red:\u{ff11}.\u{ff15})"), [s("red", 1.5)]);
    assert_eq!(segs("(red:0)"), [s("red", 0.0)]);
    // The weight replaces the enclosing one: the outer group's 1.1 is overwritten by 1.5.
    assert_eq!(segs("((fox:1.5))"), [s("fox", 1.5)]);
    assert_eq!(segs("(a (b:0.5) c)"), [s("a ", 1.1), s("b", 0.5), s(" c", 1.1)]);
    // The last `:` counts: `a:1` at 2.
    assert_eq!(segs("(a:1:2)"), [s("a:1", 2.0)]);
    // The outer group's weight is read after its last `:`, then its inner group is parsed at 1.2 -> 1.5.
    assert_eq!(segs("((a:1.5) b:1.2)"), [s("a", 1.5), s(" b", 1.2)]);
}

#[test]
fn non_numeric_weights_stay_text() {
    // float("abc") fails: the group is x1.1 and keeps the colon.
    assert_eq!(segs("(red:abc)"), [s("red:abc", 1.1)]);
    // A `:` at index 0 is not a separator (`xx > 0`).
    assert_eq!(segs("(:1.5)"), [s(":1.5", 1.1)]);
    // rfind(':') sees ":1.2 (b)", which is not a number: `a:1.2 ` at 1.1 and `b` at 1.1 * 1.1.
    assert_eq!(segs("(a:1.2 (b))"), [s("a:1.2 ", 1.1), s("b", 1.2100000000000002)]);
    assert_eq!(segs("(a:1 .5)"), [s("a:1 .5", 1.1)]);
}

#[test]
fn square_brackets_are_literal() {
    // ComfyUI has no de-emphasis syntax: brackets are text at the enclosing weight.
    assert_eq!(segs("[fox]"), [s("[fox]", 1.0)]);
    assert_eq!(segs("[[fox]]"), [s("[[fox]]", 1.0)]);
    assert_eq!(segs("[(fox)]"), [s("[", 1.0), s("fox", 1.1), s("]", 1.0)]);
    assert_eq!(segs("([fox]:0.8)"), [s("[fox]", 0.8)]);
}

#[test]
fn escaped_parentheses() {
    assert_eq!(segs(r"\(fox\)"), [s("(fox)", 1.0)]);
    assert_eq!(segs(r"(a \(b\))"), [s("a (b)", 1.1)]);
    assert_eq!(segs(r"(fox\))"), [s("fox)", 1.1)]);
    assert_eq!(segs(r"(fox\:1.2)"), [s(r"fox\", 1.2)]);
    // `\\(` is a backslash, then an escaped `(`; the `)` is then a stray one: all literal.
    assert_eq!(segs(r"\\(fox)"), [s(r"\(fox)", 1.0)]);
    assert_eq!(segs(r"a\b"), [s(r"a\b", 1.0)]);
    assert_eq!(segs(r"(emoticon \(:\))"), [s("emoticon (:)", 1.1)]);
}

#[test]
fn unbalanced_parentheses_as_comfyui() {
    // Unclosed: parse_parentheses keeps "(a b" as one item that is not a group.
    assert_eq!(parse_parentheses("(a b"), ["(a b"]);
    assert_eq!(segs("(a b"), [s("(a b", 1.0)]);
    assert_eq!(segs("x (a b"), [s("x ", 1.0), s("(a b", 1.0)]);
    // "((a)": one item starting with "(" and ending with ")": a group whose inner "(a" is unclosed.
    assert_eq!(segs("((a)"), [s("(a", 1.1)]);
    // A stray ")" ends "(a)" and starts a new item.
    assert_eq!(parse_parentheses("(a))"), ["(a)", ")"]);
    assert_eq!(segs("(a))"), [s("a", 1.1), s(")", 1.0)]);
    // After a stray ")" the counter is -1: the next "(" brings it to 0 without opening a group...
    assert_eq!(parse_parentheses("a) (b)"), ["a) (b)"]);
    assert_eq!(segs("a) (b)"), [s("a) (b)", 1.0)]);
    // ...and a second "(" at level 0 does open one: ["a) (", "(b)", ")"].
    assert_eq!(parse_parentheses("a) ((b))"), ["a) (", "(b)", ")"]);
    assert_eq!(segs("a) ((b))"), [s("a) (", 1.0), s("b", 1.1), s(")", 1.0)]);
    assert_eq!(segs(")"), [s(")", 1.0)]);
    assert_eq!(segs("("), [s("(", 1.0)]);
}

#[test]
fn deep_nesting_is_bounded() {
    let nest = |n: usize, inner: &str| format!("{}{inner}{}", "(".repeat(n), ")".repeat(n));
    // 1000 levels are read; the innermost explicit weight wins.
    assert_eq!(segs(&nest(1000, "a:1")), [s("a", 1.0)]);
    assert_eq!(segs(&nest(20, "a")), [s("a", (0..20).fold(1.0, |w, _| w * 1.1))]);
    let e = parse_prompt(&nest(1001, "a")).unwrap_err();
    assert!(e.contains("nested more than 1000"), "{e}");
}

#[test]
fn python_float_grammar() {
    // Each value is what CPython 3.11's float() returns (None: ValueError).
    let cases: &[(&str, Option<f64>)] = &[
        ("1.3", Some(1.3)),
        ("1_0", Some(10.0)),
        ("1e1_0", Some(1e10)),
        ("+.5", Some(0.5)),
        ("1.", Some(1.0)),
        ("1.e5", Some(1e5)),
        ("1.5\n", Some(1.5)),
        ("\x0b1.5\x0c", Some(1.5)),
        ("1.5\u{85}", Some(1.5)),
        ("\u{3000}1.5", Some(1.5)),
        ("\u{663}", Some(3.0)),
        ("inf", Some(f64::INFINITY)),
        ("-Infinity", Some(f64::NEG_INFINITY)),
        ("1__0", None),
        ("_1", None),
        ("1_", None),
        ("1_.5", None),
        ("1._5", None),
        ("1e_5", None),
        (".e5", None),
        ("1e", None),
        ("0x10", None),
        ("1 .5", None),
        ("\x1c1.5", None),
        ("in_f", None),
        ("", None),
        (" ", None),
        ("1.5x", None),
    ];
    for &(text, want) in cases {
        assert_eq!(python_float(text), want, "float({text:?})");
    }
    assert!(python_float("nan").unwrap().is_nan());
    assert!(python_float("-NaN").unwrap().is_nan());
}

fn tok() -> ClipTokenizer {
    ClipTokenizer::new().unwrap()
}

fn id(t: &ClipTokenizer, token: &str) -> u32 {
    t.token_id(token).unwrap_or_else(|| panic!("{token} is not a vocabulary entry"))
}

/// A chunk from its prompt tokens (after the start token) and their weights, closed and padded.
fn chunk(tokens: &[(u32, f64)]) -> WeightedChunk {
    let mut c = WeightedChunk { ids: [PAD; CONTEXT_LENGTH], weights: [1.0; CONTEXT_LENGTH], vectors: vec![] };
    c.ids[0] = START_OF_TEXT;
    for (j, &(t, w)) in tokens.iter().enumerate() {
        c.ids[1 + j] = t;
        c.weights[1 + j] = w;
    }
    c.ids[1 + tokens.len()] = END_OF_TEXT;
    c
}

#[test]
fn token_weights_per_position() {
    let t = tok();
    let (a, red, fox, cat) = (id(&t, "a</w>"), id(&t, "red</w>"), id(&t, "fox</w>"), id(&t, "cat</w>"));

    // "a (red:1.3) fox": segments "a " 1.0, "red" 1.3, " fox" 1.0, one token each.
    let got = tokenize_with_weights(&t, "a (red:1.3) fox").unwrap();
    assert_eq!(got.chunks, [chunk(&[(a, 1.0), (red, 1.3), (fox, 1.0)])]);
    assert!(got.warnings.is_empty());

    // "((cat)) [fox]": "cat" at 1.21; the text " [fox]" gives the words "[", "fox", "]" (one token each) at 1.0.
    let got = tokenize_with_weights(&t, "((cat)) [fox]").unwrap();
    let (open, close) = (id(&t, "[</w>"), id(&t, "]</w>"));
    assert_eq!(got.chunks, [chunk(&[(cat, 1.2100000000000002), (open, 1.0), (fox, 1.0), (close, 1.0)])]);

    // A group cuts a word: "fire(fox)" is "fire" + "fox" tokenized apart, not the word "firefox".
    let got = tokenize_with_weights(&t, "fire(fox)").unwrap();
    let fire = t.encode("fire");
    assert_eq!(fire, [id(&t, "fire</w>")]);
    assert_ne!(t.encode("firefox"), [fire[0], fox]);
    assert_eq!(got.chunks, [chunk(&[(fire[0], 1.0), (fox, 1.1)])]);

    // Empty prompt: start, end, padding, all weight 1: the sequence weights interpolate from.
    let got = tokenize_with_weights(&t, "").unwrap();
    assert_eq!(got.chunks, [chunk(&[])]);
    assert_eq!(got.chunks[0].ids, empty_tokens());
    assert!(!got.chunks[0].is_weighted());
}

#[test]
fn plain_prompts_chunk_as_before() {
    // No weighting syntax: one segment, one word: the same ids as the tokenizer's chunks_75, all weights 1.
    let t = tok();
    let long = "a watercolor painting of a red fox in the snow, ".repeat(12);
    for text in ["a red fox", long.as_str()] {
        let got = tokenize_with_weights(&t, text).unwrap();
        let ids: Vec<_> = got.chunks.iter().map(|c| c.ids).collect();
        assert_eq!(ids, t.chunks_75(text));
        assert!(got.chunks.iter().all(|c| !c.is_weighted()));
    }
}

#[test]
fn chunk_boundaries_as_comfyui() {
    let t = tok();
    let (a, red, fox, cat) = (id(&t, "a</w>"), id(&t, "red</w>"), id(&t, "fox</w>"), id(&t, "cat</w>"));
    let a74 = vec!["a"; 74].join(" ");

    // 74 tokens fill positions 1..=74 (batch length 75). The next word "red fox cat" (3 tokens, < 8) does not
    // fit (3 + 75 > 76): the chunk is closed with end + 1 pad and the whole word starts chunk 2.
    let got = tokenize_with_weights(&t, &format!("{a74} (red fox cat:1.2)")).unwrap();
    assert_eq!(got.chunks, [chunk(&[(a, 1.0); 74]), chunk(&[(red, 1.2), (fox, 1.2), (cat, 1.2)])]);
    assert_eq!(got.chunks[0].ids[75..], [END_OF_TEXT, PAD]);

    // An 8-token word (>= 8) is cut instead: 1 token fits (76 - 75), the other 7 go to chunk 2.
    let a8 = ["a"; 8].join(" ");
    let got = tokenize_with_weights(&t, &format!("{a74} ({a8}:1.2)")).unwrap();
    let mut first = vec![(a, 1.0); 74];
    first.push((a, 1.2));
    assert_eq!(got.chunks, [chunk(&first), chunk(&[(a, 1.2); 7])]);

    // 7 tokens is still "small": it moves whole.
    let a7 = ["a"; 7].join(" ");
    let got = tokenize_with_weights(&t, &format!("{a74} ({a7}:1.2)")).unwrap();
    assert_eq!(got.chunks[1], chunk(&[(a, 1.2); 7]));
    assert_eq!(got.chunks[0].ids[75..], [END_OF_TEXT, PAD]);

    // Exactly 75 tokens fit one chunk.
    let a75 = vec!["a"; 75].join(" ");
    assert_eq!(tokenize_with_weights(&t, &a75).unwrap().chunks.len(), 1);
}

#[test]
fn embedding_references_are_dropped_like_missing_embeddings() {
    let t = tok();
    let (a, cat, comma) = (id(&t, "a</w>"), id(&t, "cat</w>"), id(&t, ",</w>"));
    // Words: "a ", "embedding:foo, cat". Name "foo," (first whitespace-separated part), leftover "cat"; the name
    // loses its comma, which ComfyUI puts back in front of the leftover: ", cat" is tokenized.
    let got = tokenize_with_weights(&t, "a embedding:foo, cat").unwrap();
    assert_eq!(got.chunks, [chunk(&[(a, 1.0), (comma, 1.0), (cat, 1.0)])]);
    assert_eq!(got.warnings.len(), 1);
    assert!(got.warnings[0].contains("embedding:foo,"), "{:?}", got.warnings);
    // At the start of a weighted segment the reference is recognised too, and its leftover keeps the weight.
    let got = tokenize_with_weights(&t, "(embedding:foo cat:1.3)").unwrap();
    assert_eq!(got.chunks, [chunk(&[(cat, 1.3)])]);
    // Not after whitespace: ordinary text.
    let got = tokenize_with_weights(&t, "xembedding:foo").unwrap();
    assert!(got.warnings.is_empty());
    assert_eq!(got.chunks, [chunk(&t.encode("xembedding:foo").into_iter().map(|i| (i, 1.0)).collect::<Vec<_>>())]);
    // A reference without a name: ComfyUI raises IndexError; we say what is wrong.
    let e = tokenize_with_weights(&t, "a embedding:").unwrap_err();
    assert!(e.contains("names no embedding"), "{e}");
}

#[test]
fn weights_that_are_not_finite_f32_are_errors() {
    let t = tok();
    for text in ["(a:nan)", "(a:inf)", "(a:-inf)", "(a:1e39)"] {
        let e = tokenize_with_weights(&t, text).unwrap_err();
        assert!(e.contains("is not a finite number"), "{text}: {e}");
    }
    // 1.1^931 overflows f32.
    let deep = format!("{}a{}", "(".repeat(931), ")".repeat(931));
    assert!(tokenize_with_weights(&t, &deep).is_err());
    let ok = format!("{}a{}", "(".repeat(930), ")".repeat(930));
    assert!(tokenize_with_weights(&t, &ok).is_ok());
    // A NaN weight on text that makes no tokens harms nothing, as in ComfyUI.
    assert_eq!(tokenize_with_weights(&t, "( :nan)").unwrap().chunks, [chunk(&[])]);
}

#[test]
fn apply_token_weights_arithmetic() {
    // Two positions of width 3: row 0 weight 1 (untouched, even where the formula would round), row 1 weight 1.3.
    let mut z = vec![0.1f32, 0.2, 0.3, 1.0, -2.0, 0.5];
    let e = vec![0.7f32, -0.1, 0.3, 0.25, 0.5, 0.5];
    apply_token_weights(&mut z, &e, &[1.0, 1.3]).unwrap();
    assert_eq!(z[..3], [0.1, 0.2, 0.3]);
    // (z - e) * 1.3f32 + e in f32.
    let w = 1.3f32;
    assert_eq!(z[3..], [(1.0 - 0.25) * w + 0.25, (-2.0 - 0.5) * w + 0.5, 0.5]);
    assert!(apply_token_weights(&mut z, &e[..5], &[1.0, 1.3]).is_err());
    assert!(apply_token_weights(&mut z, &e, &[1.0; 4]).is_err());
}

struct Messages(Mutex<Vec<String>>);

impl graph::exec::Progress for Messages {
    fn message(&self, text: &str) {
        self.0.lock().unwrap().push(text.to_owned());
    }
}

/// What CLIPTextEncode returned: the conditioning's shape and values, and the messages it printed.
type Encoded = (Vec<usize>, Vec<f32>, Vec<String>);

/// The tiny checkpoint with a full vocabulary, its CLIP handle, and a CLIPTextEncode runner.
struct Fixture {
    gpu: &'static Gpu,
    clip: graph::Value,
    dir: crate::common::TempDir,
}

impl Fixture {
    fn new(gpu: &'static Gpu, name: &str) -> Fixture {
        let dir = crate::common::temp_dir(name);
        let ckpt = full_vocab_checkpoint(&dir);
        let reg = nodes::builtin_registry();
        let progress = graph::exec::NoProgress;
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let mut ctx = graph::RunContext::new("ckpt", Path::new("."), &dir, "", &progress, &cancel);
        let mut inp = graph::NodeInputs::default();
        inp.params.insert("ckpt_name".into(), graph::ParamValue::String(ckpt.display().to_string()));
        let loaded = reg.get("CheckpointLoaderSimple").unwrap().run(&mut ctx, &inp).unwrap();
        Fixture { gpu, clip: loaded[1].clone(), dir }
    }

    fn handle(&self) -> std::sync::Arc<ClipHandle> {
        self.clip.downcast::<ClipHandle>().unwrap()
    }

    /// Runs CLIPTextEncode.
    fn encode(&self, text: &str) -> Result<Encoded, String> {
        let reg = nodes::builtin_registry();
        let progress = Messages(Mutex::new(vec![]));
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let mut ctx = graph::RunContext::new("enc", Path::new("."), &self.dir, "", &progress, &cancel);
        let mut inp = graph::NodeInputs::default();
        inp.inputs.insert("clip".into(), self.clip.clone());
        inp.params.insert("text".into(), graph::ParamValue::String(text.into()));
        let out = reg.get("CLIPTextEncode").unwrap().run(&mut ctx, &inp).map_err(|e| e.to_string())?;
        let cond = out[0].downcast::<nodes::payload::Conditioning>().unwrap();
        let v = self.gpu.download(&cond.entries[0].cond).unwrap();
        Ok((cond.entries[0].cond.shape().to_vec(), v, progress.0.into_inner().unwrap()))
    }

    /// The unweighted encoder output of one 77-id sequence.
    fn forward(&self, ids: &[u32; CONTEXT_LENGTH]) -> Vec<f32> {
        let h = self.handle();
        let z = h.model.forward(self.gpu, std::slice::from_ref(ids), ClipLayer::Last).unwrap();
        self.gpu.download(&z).unwrap()
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn encoder_weighting_on_the_tiny_model() {
    let Some(gpu) = gpu::testing::shared_gpu() else { return };
    let f = Fixture::new(gpu, "prompt-weights");
    let h = f.handle();
    let width = h.model.config.hidden_size;

    // All weights 1: exactly the unweighted encoder output (no empty-prompt interpolation at all).
    let (shape, cond, _) = f.encode("a red fox").unwrap();
    assert_eq!(shape, [1, 77, width]);
    let ids = h.tokenizer.tokenize_77("a red fox");
    assert_eq!(bits(&cond), bits(&f.forward(&ids.try_into().unwrap())));
    // An explicit weight of exactly 1.0 is no weight either.
    let (_, cond1, _) = f.encode("a (red:1.0) fox").unwrap();
    assert_eq!(bits(&cond1), bits(&cond));

    // Weighted: every position j with weight w != 1 is z_empty[j] + (z[j] - z_empty[j]) * w (f32, ComfyUI's
    // order), the others are z[j] bit for bit. "a (red:1.3) ((fox)) (cat:0)": positions 2, 3, 4 weighted.
    let text = "a (red:1.3) ((fox)) (cat:0)";
    let (_, cond, _) = f.encode(text).unwrap();
    let chunk = &tokenize_with_weights(&h.tokenizer, text).unwrap().chunks[0];
    assert_eq!(chunk.weights[..6], [1.0, 1.0, 1.3, 1.2100000000000002, 0.0, 1.0]);
    let z = f.forward(&chunk.ids);
    let ze = f.forward(&empty_tokens());
    for j in 0..CONTEXT_LENGTH {
        let row = j * width..(j + 1) * width;
        let w = chunk.weights[j];
        let want: Vec<f32> = if w == 1.0 {
            z[row.clone()].to_vec()
        } else {
            z[row.clone()].iter().zip(&ze[row.clone()]).map(|(&z, &e)| (z - e) * (w as f32) + e).collect()
        };
        assert_eq!(bits(&cond[row.clone()]), bits(&want), "position {j}, weight {w}");
        if w != 1.0 {
            // The weight did something, and weight 0 gives the empty prompt's vector exactly.
            assert_ne!(bits(&cond[row.clone()]), bits(&z[row.clone()]), "position {j}");
        }
    }
    let row4 = 4 * width..5 * width;
    assert_eq!(bits(&cond[row4.clone()]), bits(&ze[row4]));

    // Two chunks, only the second weighted: the first is the plain encoder output.
    let a80 = vec!["a"; 80].join(" ");
    let text = format!("{a80} (fox:1.5)");
    let (shape, cond, _) = f.encode(&text).unwrap();
    assert_eq!(shape, [1, 2 * 77, width]);
    let chunks = tokenize_with_weights(&h.tokenizer, &text).unwrap().chunks;
    assert!(!chunks[0].is_weighted() && chunks[1].is_weighted());
    assert_eq!(bits(&cond[..77 * width]), bits(&f.forward(&chunks[0].ids)));
    let mut z2 = f.forward(&chunks[1].ids);
    apply_token_weights(&mut z2, &ze, &chunks[1].weights).unwrap();
    assert_eq!(bits(&cond[77 * width..]), bits(&z2));

    // The library call the node uses gives the same tensor.
    let t = encode_token_weights(gpu, &h.model, &chunks, ClipLayer::Last).unwrap();
    assert_eq!(bits(&gpu.download(&t).unwrap()), bits(&cond));
}

#[test]
fn text_encode_errors_and_warnings_name_the_param() {
    let Some(gpu) = gpu::testing::shared_gpu() else { return };
    let f = Fixture::new(gpu, "prompt-weights-errors");
    let e = f.encode("a (fox:nan)").unwrap_err();
    assert!(e.contains("param \"text\"") && e.contains("not a finite number"), "{e}");
    let (_, _, messages) = f.encode("a embedding:foo cat").unwrap();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(messages[0].contains("param \"text\"") && messages[0].contains("embedding:foo"), "{messages:?}");
}
