//! Prompt weighting as ComfyUI's CLIPTextEncode reads it: `(word:1.3)`, `(word)` = x1.1, `((word))` = x1.21,
//! escaped `\(` `\)`, and the per-token interpolation from the empty prompt's encoding that applies the weights.
//!
//! Ported from ComfyUI's `comfy/sd1_clip.py` (Comfy-Org/ComfyUI@4bd7a4004ab8bf0e516222036dc97733ddf3aa74; the
//! parser, chunking and weighting code is identical at comfyanonymous/ComfyUI@b55c2247654476fbc744e572ba7a834fd9378745,
//! the version the tokenizer cites): `escape_important`, `parse_parentheses`, `token_weights`, `unescape_important`,
//! `SDTokenizer.tokenize_with_weights` and `ClipTokenWeightEncoder.encode_token_weights`. CLIPTextEncode in
//! `nodes.py` is `clip.encode_from_tokens_scheduled(clip.tokenize(text))`, which for SD 1.x reaches exactly these.
//!
//! # Syntax (what ComfyUI does, including its quirks)
//!
//! - `(text)` multiplies the enclosing weight by 1.1; nesting compounds in f64: `((a))` = 1.1 * 1.1 =
//!   1.2100000000000002, `(((a)))` = 1.3310000000000004.
//! - `(text:W)` sets the weight to `W`, replacing (not multiplying) the enclosing weight: `((a:1.5))` is 1.5, and
//!   `(a (b:0.5))` gives `b` 0.5. `W` is whatever Python's `float()` reads after the LAST `:` of the group: decimals,
//!   `.5`, `2.`, exponents, signs (negative weights are allowed), surrounding whitespace, digit-group underscores
//!   (`1_0`), non-ASCII decimal digits (`１.５`), `inf`/`nan`. If that is not a number, or the `:` is the group's
//!   first character, the group gets x1.1 and the `:...` stays in the text: `(a:b)` is `a:b` at 1.1, and because
//!   the last `:` is searched over the whole group, `(a:1.2 (b))` is `a:1.2 ` at 1.1 and `b` at 1.21.
//! - Square brackets mean nothing to ComfyUI (de-emphasis by `[word]` is A1111's syntax): `[word]` is tokenized as
//!   the text `[word]` at the enclosing weight.
//! - `\(` and `\)` are literal parentheses. A backslash before anything else stays a backslash; `\\(` is a
//!   backslash followed by an escaped (literal) `(`.
//! - Unbalanced parentheses follow `parse_parentheses`' counter exactly: an unclosed `(` leaves its text literal,
//!   parentheses included (`(a b` is the text `(a b` at 1.0); a stray `)` drives the counter negative, after which
//!   parentheses stay literal until a `(` brings it back to zero (`a) (b)` is all literal text at 1.0).
//! - `()` and groups that only hold whitespace produce no tokens.
//!
//! # Tokens and chunks
//!
//! Each weighted segment is tokenized on its own (so a word cut by a parenthesis is two words) and is one "word"
//! for chunking, further split before every `embedding:` that follows whitespace. Chunks hold 75 tokens between
//! start and end tokens. A word of fewer than 8 tokens that does not fit in the current chunk moves whole to the
//! next one (the current chunk is closed with its end token and padded); a word of 8 or more tokens is cut at the
//! chunk boundary. The start, end and padding tokens always have weight 1.
//!
//! # Weighting
//!
//! If any token's weight is not exactly 1.0, the empty prompt (`<start> <end> <pad>...`, 77 ids) is encoded too,
//! and every position `j` whose weight `w != 1.0` becomes `(z[j] - z_empty[j]) * w + z_empty[j]`, in f32, in that
//! order, with `w` rounded to f32 first (PyTorch's CPU and CUDA kernels convert a Python scalar to the f32 compute
//! type). Positions of weight 1.0 keep the encoder output bit for bit; a prompt without weights is not touched at
//! all. We do this on the CPU after downloading the chunk (77 x 768 floats for SD 1.x): it is cheap, and only
//! plain f32 arithmetic with no fused multiply-add guarantees ComfyUI's exact result.
//!
//! # Where sdgraph differs
//!
//! - `embedding:NAME` is ComfyUI's: the word is looked up by an [`EmbeddingLookup`] (the node's, over the
//!   embeddings folders, [`crate::embeddings`]), with ComfyUI's leftover-text handling (`_try_get_embedding`:
//!   text after whitespace, or from a `<` / `[`, in the same word is tokenized after it; a name not found is
//!   tried again without leading/trailing commas, which then come back as text). Its vectors take one position
//!   each, at the segment's weight, and go to the encoder in place of token embeddings. A name that is not found
//!   is dropped with ComfyUI's warning; one whose vectors are not the encoder's width keeps its positions while
//!   the prompt is chunked and is then removed from its chunk, the later positions moving up and padding filling
//!   the end while the weights stay where they were, as ComfyUI's `process_tokens` does (with its warning).
//!   [`tokenize_with_weights`] looks nothing up, as if the folder were empty. `embedding:` with no name is an
//!   error (ComfyUI raises `IndexError`).
//! - A token whose weight is not a finite f32 (`(a:nan)`, `(a:inf)`, `(a:1e39)`, or 931 nested parentheses) is an
//!   error; ComfyUI would fill the conditioning with NaN/inf.
//! - Parentheses nested more than [`MAX_NESTING`] deep are an error (ComfyUI's recursive parser hits Python's
//!   recursion limit a little below 1000 levels).
//! - Everything else, including the f64 weight arithmetic and Python's `float()` grammar, is ComfyUI's.

use std::rc::Rc;

use gpu::ops::layout::concat;
use gpu::{Gpu, Tensor};

use crate::ModelError;
use crate::clip::{ClipLayer, ClipTextModel, InputVector};
use crate::embeddings::Embedding;
use crate::tokenizer::{CONTEXT_LENGTH, ClipTokenizer, END_OF_TEXT, PAD, START_OF_TEXT};

/// What `(text)` multiplies the enclosing weight by.
pub const PAREN_FACTOR: f64 = 1.1;
/// Deepest parenthesis nesting read; deeper is an error. Bounds the parser's work (each level rescans its text).
pub const MAX_NESTING: usize = 1000;
/// ComfyUI's `max_word_length`: a word of this many tokens or more may be cut at a chunk boundary.
pub const MAX_WORD_LENGTH: usize = 8;
/// ComfyUI's `embedding_identifier`.
pub const EMBEDDING_PREFIX: &str = "embedding:";

/// The sentinels `escape_important` puts in place of `\)` and `\(`.
const ESCAPED_CLOSE: &str = "\0\u{1}";
const ESCAPED_OPEN: &str = "\0\u{2}";

/// A piece of the prompt and its weight: one entry of ComfyUI's `token_weights` output, unescaped.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub text: String,
    pub weight: f64,
}

/// The id a chunk holds where an embedding vector stands (never a vocabulary entry, so an encoder that is not
/// given the vector refuses it).
pub const EMBEDDING_SLOT: u32 = u32::MAX;

/// One 77-position sequence for the text encoder, with each position's weight.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedChunk {
    pub ids: [u32; CONTEXT_LENGTH],
    pub weights: [f64; CONTEXT_LENGTH],
    /// Positions that take an embedding vector instead of a token (their id is [`EMBEDDING_SLOT`]), ascending.
    pub vectors: Vec<(usize, Vec<f32>)>,
}

impl WeightedChunk {
    /// Whether any position has a weight other than exactly 1.0.
    pub fn is_weighted(&self) -> bool {
        self.weights.iter().any(|&w| w != 1.0)
    }
}

/// The result of [`tokenize_with_weights`].
#[derive(Debug, Clone, PartialEq)]
pub struct Tokenized {
    /// At least one chunk.
    pub chunks: Vec<WeightedChunk>,
    /// What was ignored (embedding references), for the user.
    pub warnings: Vec<String>,
}

/// Where `embedding:NAME` is looked up.
pub trait EmbeddingLookup {
    /// The text encoder's width: embeddings of another width are dropped (after chunking, as ComfyUI).
    fn width(&self) -> usize;
    /// The embedding `name` names: `Ok(None)` when there is no such file, `Err` (naming the file and the
    /// problem) when its file gives no vectors; both drop the word with a warning, as ComfyUI does.
    fn load(&mut self, name: &str) -> Result<Option<Embedding>, String>;
    /// Where names were looked up, for the warning about one not found ("" for nowhere).
    fn searched(&self) -> String {
        String::new()
    }
}

/// No embeddings at all: every `embedding:NAME` is dropped as not found.
pub struct NoEmbeddings;

impl EmbeddingLookup for NoEmbeddings {
    fn width(&self) -> usize {
        0
    }
    fn load(&mut self, _: &str) -> Result<Option<Embedding>, String> {
        Ok(None)
    }
    fn searched(&self) -> String {
        " (no embeddings folder)".into()
    }
}

/// Records the names looked up and finds none.
struct RecordNames(Vec<String>);

impl EmbeddingLookup for RecordNames {
    fn width(&self) -> usize {
        0
    }
    fn load(&mut self, name: &str) -> Result<Option<Embedding>, String> {
        if !self.0.iter().any(|n| n == name) {
            self.0.push(name.to_owned());
        }
        Ok(None)
    }
}

/// Every name `embedding:` words of `text` may be looked up by (with and without commas), in order: what the
/// result of [`tokenize_with_embeddings`] depends on besides the text, for a cache key.
pub fn embedding_names(text: &str) -> Result<Vec<String>, String> {
    let mut rec = RecordNames(Vec::new());
    for seg in parse_prompt(text)? {
        for word in split_embedding_words(&seg.text) {
            if word.starts_with(EMBEDDING_PREFIX) {
                try_get_embedding(&word, &mut rec, &mut Vec::new())?;
            }
        }
    }
    Ok(rec.0)
}

/// One position of a chunk before it is laid out: a token, or an embedding vector.
#[derive(Debug, Clone)]
enum Tok {
    Id(u32),
    Vector(Rc<[f32]>),
}

/// ComfyUI's `escape_important`: `\)` and `\(` become sentinels the parser does not see as parentheses.
pub fn escape_important(text: &str) -> String {
    text.replace("\\)", ESCAPED_CLOSE).replace("\\(", ESCAPED_OPEN)
}

/// ComfyUI's `unescape_important`: the sentinels back to literal parentheses.
pub fn unescape_important(text: &str) -> String {
    text.replace(ESCAPED_CLOSE, ")").replace(ESCAPED_OPEN, "(")
}

/// ComfyUI's `parse_parentheses`: splits `s` into top-level items, each either a `(...)` group or the text between
/// groups. The nesting counter is a plain integer that a stray `)` drives negative, exactly as in Python.
pub fn parse_parentheses(s: &str) -> Vec<String> {
    let mut result = Vec::new();
    let mut current = String::new();
    let mut level: i64 = 0;
    for c in s.chars() {
        match c {
            '(' => {
                if level == 0 {
                    if !current.is_empty() {
                        result.push(std::mem::take(&mut current));
                    }
                    current.push('(');
                } else {
                    current.push(c);
                }
                level += 1;
            }
            ')' => {
                level -= 1;
                current.push(')');
                if level == 0 {
                    result.push(std::mem::take(&mut current));
                }
            }
            _ => current.push(c),
        }
    }
    if !current.is_empty() {
        result.push(current);
    }
    result
}

/// ComfyUI's `token_weights(s, weight)` on already escaped text: the (still escaped) segments and their weights,
/// in order. Iterative rather than recursive so deep nesting cannot overflow the stack; nesting deeper than
/// [`MAX_NESTING`] is an error.
pub fn token_weights(s: &str, weight: f64) -> Result<Vec<(String, f64)>, String> {
    enum Task {
        /// Split this text into items at this weight and depth.
        Parse(String, f64, usize),
        /// One item of a parse.
        Item(String, f64, usize),
    }
    let mut out = Vec::new();
    let mut stack = vec![Task::Parse(s.to_owned(), weight, 0)];
    while let Some(task) = stack.pop() {
        match task {
            Task::Parse(text, w, depth) => {
                if depth > MAX_NESTING {
                    return Err(format!("parentheses are nested more than {MAX_NESTING} deep"));
                }
                // Reversed so the stack pops them in order.
                stack.extend(parse_parentheses(&text).into_iter().rev().map(|item| Task::Item(item, w, depth)));
            }
            Task::Item(x, w, depth) => {
                if x.len() >= 2 && x.starts_with('(') && x.ends_with(')') {
                    let inner = &x[1..x.len() - 1];
                    let mut weight = w * PAREN_FACTOR;
                    let mut text = inner;
                    // `xx > 0`: a `:` at index 0 is not a weight separator.
                    if let Some(xx) = inner.rfind(':').filter(|&xx| xx > 0)
                        && let Some(v) = python_float(&inner[xx + 1..])
                    {
                        weight = v;
                        text = &inner[..xx];
                    }
                    stack.push(Task::Parse(text.to_owned(), weight, depth + 1));
                } else {
                    out.push((x, w));
                }
            }
        }
    }
    Ok(out)
}

/// The prompt's weighted segments as ComfyUI tokenizes them: `escape_important`, `token_weights(text, 1.0)`, and
/// `unescape_important` on each segment. Weights are returned as parsed, NaN and infinities included.
pub fn parse_prompt(text: &str) -> Result<Vec<Segment>, String> {
    Ok(token_weights(&escape_important(text), 1.0)?
        .into_iter()
        .map(|(s, weight)| Segment { text: unescape_important(&s), weight })
        .collect())
}

/// Python's `str.isspace` (also what `re`'s `\s` and `str.split()` use): Unicode White_Space plus the ASCII
/// separators U+001C..U+001F.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// The code points of digit zero of every run of decimal digits (Unicode general category Nd, each run 0..9 in
/// order), from Python 3.11's `unicodedata` (Unicode 14.0.0, the tokenizer's version):
/// `[c for c in range(0x110000) if unicodedata.decimal(chr(c), -1) == 0]`.
const DECIMAL_ZEROS: &[u32] = &[
    0x30, 0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6, 0xE50, 0xED0,
    0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620,
    0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0, 0xFF10, 0x104A0, 0x10D30, 0x11066, 0x110F0, 0x11136, 0x111D0,
    0x112F0, 0x11450, 0x114D0, 0x11650, 0x116C0, 0x11730, 0x118E0, 0x11950, 0x11C50, 0x11D50, 0x11DA0, 0x16A60,
    0x16AC0, 0x16B50, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E950, 0x1FBF0,
];

/// Python's `unicodedata.decimal(c)`.
fn decimal_value(c: char) -> Option<u8> {
    let cp = c as u32;
    let i = DECIMAL_ZEROS.partition_point(|&z| z <= cp).checked_sub(1)?;
    let d = cp - DECIMAL_ZEROS[i];
    (d < 10).then_some(d as u8)
}

/// Python's `float(s)` for a `str`: non-ASCII whitespace and decimal digits are mapped to ASCII
/// (`_PyUnicode_TransformDecimalAndSpaceToASCII`; any other non-ASCII character fails), ASCII whitespace is
/// stripped from both ends, underscores are allowed only between two digits and removed, and the rest must be a
/// decimal float or `inf`/`infinity`/`nan` with an optional sign (Rust's grammar is the same, case-insensitive
/// specials included, and both round correctly).
pub fn python_float(s: &str) -> Option<f64> {
    let mut ascii = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii() {
            ascii.push(c);
        } else if is_python_space(c) {
            ascii.push(' ');
        } else {
            ascii.push(char::from(b'0' + decimal_value(c)?));
        }
    }
    let t = ascii.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r'));
    let b = t.as_bytes();
    let mut clean = String::with_capacity(t.len());
    for (i, &ch) in b.iter().enumerate() {
        if ch == b'_' {
            let between_digits = i > 0 && i + 1 < b.len() && b[i - 1].is_ascii_digit() && b[i + 1].is_ascii_digit();
            if !between_digits {
                return None;
            }
        } else {
            clean.push(char::from(ch));
        }
    }
    clean.parse::<f64>().ok()
}

/// ComfyUI's `re.split(r'(?<=\s)embedding:', text)` followed by re-attaching the prefix and dropping empty pieces:
/// the "words" of one segment.
fn split_embedding_words(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    let mut start = 0;
    for (at, _) in text.match_indices(EMBEDDING_PREFIX) {
        if text[..at].chars().next_back().is_some_and(is_python_space) {
            pieces.push(&text[start..at]);
            start = at + EMBEDDING_PREFIX.len();
        }
    }
    pieces.push(&text[start..]);
    let mut words = vec![pieces[0].to_owned()];
    words.extend(pieces[1..].iter().map(|p| format!("{EMBEDDING_PREFIX}{p}")));
    words.retain(|w| !w.is_empty());
    words
}

/// ComfyUI's `_try_get_embedding` on the word `embedding:...`: the name it reports, the embedding (`None` when
/// not found or unreadable; the reason for the latter goes to `warnings`), and the leftover text it goes on to
/// tokenize ("" for none).
fn try_get_embedding(
    word: &str,
    lookup: &mut dyn EmbeddingLookup,
    warnings: &mut Vec<String>,
) -> Result<(String, Option<Embedding>, String), String> {
    let name = word[EMBEDDING_PREFIX.len()..].trim_matches('\n');
    let parts: Vec<&str> = name.split(is_python_space).filter(|p| !p.is_empty()).collect();
    let Some((&first, rest)) = parts.split_first() else {
        // Python: `split_embed[0]` on an empty list raises IndexError.
        return Err(format!("{word:?} names no embedding"));
    };
    let mut name = first.to_owned();
    let mut leftover = rest.join(" ");
    if let Some(at) = name.find(['<', '[']) {
        let tail = if leftover.is_empty() { String::new() } else { format!(" {leftover}") };
        leftover = format!("{}{tail}", &name[at..]);
        name.truncate(at);
    }
    let mut load = |n: &str| match lookup.load(n) {
        Ok(e) => e,
        Err(why) => {
            warnings.push(format!("embedding:{n}: {why}; error loading embedding, skipping it"));
            None
        }
    };
    let embed = load(&name);
    if embed.is_none() {
        let stripped = name.trim_matches(',');
        let (n_name, n_stripped) = (name.chars().count(), stripped.chars().count());
        if n_stripped < n_name {
            let embed = load(stripped);
            // `"{} {}".format(embedding_name[len(stripped):], leftover)`: Python slices by code points, and this
            // takes the name's tail even when the commas were leading (ComfyUI's quirk, kept).
            let tail: String = name.chars().skip(n_stripped).collect();
            return Ok((name, embed, format!("{tail} {leftover}")));
        }
    }
    Ok((name, embed, leftover))
}

/// ComfyUI's `SDTokenizer.tokenize_with_weights` for SD 1.x (`max_length=77`, padding with the end token, no
/// `min_length`/`min_padding`): the prompt's chunks with each position's weight. Errors name the problem in the
/// prompt (an out-of-range weight, too deep nesting, a nameless `embedding:`).
pub fn tokenize_with_weights(tokenizer: &ClipTokenizer, text: &str) -> Result<Tokenized, String> {
    tokenize_with_embeddings(tokenizer, text, &mut NoEmbeddings)
}

/// [`tokenize_with_weights`] with `embedding:NAME` looked up in `embeddings`: each vector of a found embedding
/// takes one position (see the module header).
pub fn tokenize_with_embeddings(
    tokenizer: &ClipTokenizer,
    text: &str,
    embeddings: &mut dyn EmbeddingLookup,
) -> Result<Tokenized, String> {
    tokenize_with_embeddings_padded(tokenizer, text, embeddings, PAD)
}

/// [`tokenize_with_embeddings`] padding with `pad`: `tokenizer::OPEN_CLIP_PAD` (0) for SD 2.x's and SDXL's
/// OpenCLIP encoders, whose ComfyUI tokenizers (`SD2ClipHTokenizer`, `SDXLClipGTokenizer`) set `pad_with_end=False`;
/// everything else is the same.
pub fn tokenize_with_embeddings_padded(
    tokenizer: &ClipTokenizer,
    text: &str,
    embeddings: &mut dyn EmbeddingLookup,
    pad: u32,
) -> Result<Tokenized, String> {
    let mut warnings = Vec::new();
    let width = embeddings.width();
    // Token groups ("words"), each with its segment's weight.
    let mut groups: Vec<(Vec<Tok>, f64)> = Vec::new();
    let finite = |seg: &Segment| {
        if (seg.weight as f32).is_finite() {
            Ok(())
        } else {
            Err(format!("weight {:?} of {:?} is not a finite number", seg.weight, seg.text))
        }
    };
    for seg in parse_prompt(text)? {
        for mut word in split_embedding_words(&seg.text) {
            if word.starts_with(EMBEDDING_PREFIX) {
                let (name, embed, leftover) = try_get_embedding(&word, embeddings, &mut warnings)?;
                match embed {
                    None => {
                        warnings.push(format!("embedding:{name} does not exist, ignoring{}", embeddings.searched()))
                    }
                    Some(e) => {
                        if e.width != width {
                            warnings.push(format!(
                                "embedding:{name}: shape mismatch when trying to apply embedding, embedding will be \
                                 ignored {} != {width} (its vectors are not this text encoder's width)",
                                e.width
                            ));
                        }
                        if e.vectors > 0 {
                            finite(&seg)?;
                        }
                        let vectors = (0..e.vectors).map(|i| Tok::Vector(Rc::from(e.vector(i)))).collect();
                        groups.push((vectors, seg.weight));
                    }
                }
                if leftover.is_empty() {
                    continue;
                }
                word = leftover;
            }
            let ids = tokenizer.encode(&word);
            if !ids.is_empty() {
                finite(&seg)?;
            }
            groups.push((ids.into_iter().map(Tok::Id).collect(), seg.weight));
        }
    }
    Ok(Tokenized { chunks: chunk_groups(&groups, width, pad)?, warnings })
}

/// The batching loop of `tokenize_with_weights`: packs token groups into 77-position chunks. Vectors not `width`
/// wide are then removed from their chunk as ComfyUI's `process_tokens` does: later positions move up, padding
/// fills the end, and the weights stay by position.
fn chunk_groups(groups: &[(Vec<Tok>, f64)], width: usize, pad: u32) -> Result<Vec<WeightedChunk>, String> {
    // With an end token, a chunk holds at most max_length - 1 = 76 positions before it is closed.
    const OPEN_MAX: usize = CONTEXT_LENGTH - 1;
    let start = || vec![(Tok::Id(START_OF_TEXT), 1.0)];
    let mut batches: Vec<Vec<(Tok, f64)>> = Vec::new();
    let mut batch: Vec<(Tok, f64)> = start();
    for (toks, weight) in groups {
        let is_large = toks.len() >= MAX_WORD_LENGTH;
        let mut group: &[Tok] = toks;
        while !group.is_empty() {
            if group.len() + batch.len() > OPEN_MAX {
                let remaining = OPEN_MAX - batch.len();
                if is_large {
                    // Cut the word at the boundary.
                    batch.extend(group[..remaining].iter().map(|t| (t.clone(), *weight)));
                    batch.push((Tok::Id(END_OF_TEXT), 1.0));
                    group = &group[remaining..];
                } else {
                    // Close this chunk; the whole word goes to the next.
                    batch.push((Tok::Id(END_OF_TEXT), 1.0));
                    batch.extend(std::iter::repeat_n((Tok::Id(pad), 1.0), remaining));
                }
                batches.push(std::mem::replace(&mut batch, start()));
            } else {
                batch.extend(group.iter().map(|t| (t.clone(), *weight)));
                group = &[];
            }
        }
    }
    batch.push((Tok::Id(END_OF_TEXT), 1.0));
    let fill = CONTEXT_LENGTH.saturating_sub(batch.len());
    batch.extend(std::iter::repeat_n((Tok::Id(pad), 1.0), fill));
    batches.push(batch);

    batches
        .into_iter()
        .map(|b| {
            if b.len() != CONTEXT_LENGTH {
                return Err(format!("internal error: a chunk of {} positions instead of {CONTEXT_LENGTH}", b.len()));
            }
            let mut chunk =
                WeightedChunk { ids: [pad; CONTEXT_LENGTH], weights: [1.0; CONTEXT_LENGTH], vectors: Vec::new() };
            let kept = b.iter().filter(|(t, _)| !matches!(t, Tok::Vector(v) if v.len() != width));
            for (j, (t, _)) in kept.enumerate() {
                chunk.ids[j] = match t {
                    Tok::Id(id) => *id,
                    Tok::Vector(v) => {
                        chunk.vectors.push((j, v.to_vec()));
                        EMBEDDING_SLOT
                    }
                };
            }
            for (j, (_, w)) in b.iter().enumerate() {
                chunk.weights[j] = *w;
            }
            Ok(chunk)
        })
        .collect()
}

/// ComfyUI's `gen_empty_tokens` for SD 1.x: the sequence whose encoding weights interpolate from.
pub fn empty_tokens() -> [u32; CONTEXT_LENGTH] {
    empty_tokens_with_pad(PAD)
}

/// [`empty_tokens`] padded with `pad` (ComfyUI's `gen_empty_tokens` with the encoder's `special_tokens["pad"]`:
/// 0 for SD 2.x's and SDXL's OpenCLIP encoders).
pub fn empty_tokens_with_pad(pad: u32) -> [u32; CONTEXT_LENGTH] {
    let mut ids = [pad; CONTEXT_LENGTH];
    ids[0] = START_OF_TEXT;
    ids[1] = END_OF_TEXT;
    ids
}

/// Applies `weights` (one per position) to one chunk's encoder output `z` (`[positions, width]`, row-major) given
/// the empty prompt's `z_empty` of the same shape: each row `j` with `weights[j] != 1.0` becomes
/// `(z[j] - z_empty[j]) * (weights[j] as f32) + z_empty[j]`, in f32 and in that order; other rows are untouched.
pub fn apply_token_weights(z: &mut [f32], z_empty: &[f32], weights: &[f64]) -> Result<(), String> {
    let rows = weights.len();
    if rows == 0 || z.len() != z_empty.len() || !z.len().is_multiple_of(rows) {
        return Err(format!(
            "token weights: {} values and {} empty-prompt values do not form {rows} rows",
            z.len(),
            z_empty.len()
        ));
    }
    let width = z.len() / rows;
    for (j, &w) in weights.iter().enumerate() {
        if w == 1.0 {
            continue;
        }
        let w = w as f32;
        let row = j * width..(j + 1) * width;
        for (v, &e) in z[row.clone()].iter_mut().zip(&z_empty[row]) {
            *v = (*v - e) * w + e;
        }
    }
    Ok(())
}

/// ComfyUI's `encode_token_weights` for SD 1.x: encodes every chunk at `layer`, applies the weights (encoding the
/// empty prompt only when some weight is not 1.0), and concatenates the chunks: `[1, 77 * chunks, C]` in the
/// model's dtype.
pub fn encode_token_weights(
    gpu: &Gpu,
    model: &ClipTextModel,
    chunks: &[WeightedChunk],
    layer: ClipLayer,
) -> Result<Tensor, ModelError> {
    if chunks.is_empty() {
        return Err(ModelError::Config("no token chunks to encode".into()));
    }
    let z_empty = if chunks.iter().any(WeightedChunk::is_weighted) {
        Some(gpu.download(&model.forward(gpu, &[empty_tokens()], layer)?)?)
    } else {
        None
    };
    let mut parts = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let vectors: Vec<InputVector> = chunk
            .vectors
            .iter()
            .map(|(position, values)| InputVector { row: 0, position: *position, values })
            .collect();
        // [1, 77, C]
        let z = model.forward_with_vectors(gpu, std::slice::from_ref(&chunk.ids), &vectors, layer)?;
        let z = match &z_empty {
            Some(empty) if chunk.is_weighted() => {
                let mut v = gpu.download(&z)?;
                apply_token_weights(&mut v, empty, &chunk.weights).map_err(ModelError::Config)?;
                gpu.upload(&v, z.shape(), z.dtype())?
            }
            _ => z,
        };
        parts.push(z);
    }
    if parts.len() == 1 {
        return Ok(parts.pop().expect("one part"));
    }
    Ok(concat(gpu, &parts.iter().collect::<Vec<_>>(), 1)?)
}
