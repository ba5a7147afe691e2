//! The CLIP tokenizer of Stable Diffusion 1.x (openai/clip-vit-large-patch14), in pure Rust.
//!
//! Token-for-token identical to Hugging Face transformers' slow Python `CLIPTokenizer` (checked against 4.57.6,
//! the last release line that has it; diffusers and ComfyUI load it for SD 1.x), which is OpenAI CLIP's /
//! open_clip's `SimpleTokenizer` with a different text clean-up. (transformers 5 replaced it with a
//! `tokenizers`-backed class whose normalisation is only NFC, whitespace collapsing and lower-casing.)
//!
//! - Vocabulary: the 256 byte symbols of `bytes_to_unicode` (in `bpe.rs`), the same 256 with `</w>`, the first 48,894
//!   merges of open_clip's `bpe_simple_vocab_16e6.txt.gz` (lines 1..=48894, `merges[1:49152-256-2+1]`), then
//!   `<|startoftext|>` (49406) and `<|endoftext|>` (49407): 49,408 entries, the ids of HF's `vocab.json`.
//! - Special tokens typed in the prompt: the exact strings `<|startoftext|>` / `<|endoftext|>` are cut out before
//!   anything else and become their ids, as HF's added-token trie does.
//! - Normalisation (`normalize.rs`): HF's fallback for when `ftfy` is NOT installed, i.e. `BasicTokenizer(
//!   strip_accents=False, do_split_on_punc=False)`: delete control/format/unassigned characters, space out CJK
//!   ideographs, NFC, split on whitespace, lower-case. We match this rather than the `ftfy.fix_text` path because
//!   it is what diffusers and ComfyUI run by default (neither depends on ftfy), and because ftfy's heuristics
//!   (mojibake repair, HTML unescaping, quote uncurling) cannot be reproduced exactly. With ftfy 6.3.1 installed,
//!   HF gives the same ids for all the fixture's SD-style, Latin/Greek/Cyrillic, punctuation, number, apostrophe,
//!   NFC and special-token prompts, but different ids for CJK ideographs (one word per run instead of one per
//!   ideograph), full-width forms, ligatures, curly quotes, HTML entities, ZWJ emoji sequences (the ZWJ is deleted
//!   here) and control/format/unassigned characters.
//! - Pre-tokenising pattern and byte-level BPE (`bpe.rs`) as in the reference.
//!
//! Unicode data (categories, NFC, case properties) is Python 3.11's (Unicode 14.0.0). Under another Python, HF can
//! differ on characters whose data changed between Unicode versions: mainly those assigned after 14.0, which we,
//! like Python 3.11, delete as unassigned.
//!
//! Sequence forms: [`ClipTokenizer::tokenize_77`] is HF's `padding="max_length", max_length=77, truncation=True`;
//! [`ClipTokenizer::chunks_75`] is ComfyUI's long-prompt chunking.
//!
//! The vocabulary file ships with open_clip_torch 3.3.0 (MIT, see `LICENSE-open_clip`).

mod bpe;
mod normalize;
mod tables;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::sync::{Arc, OnceLock};

use bpe::{Bpe, Merge};

/// `<|startoftext|>`: opens every 77-token sequence.
pub const START_OF_TEXT: u32 = 49406;
/// `<|endoftext|>`: closes every sequence.
pub const END_OF_TEXT: u32 = 49407;
/// What Stable Diffusion 1.x pads the 77 positions with: `<|endoftext|>`. openai/clip-vit-large-patch14's
/// `tokenizer_config.json` sets `pad_token` to `<|endoftext|>`, and ComfyUI's SD1 tokenizer pads with its end
/// token (`pad_with_end=True`). (SD 2.x's and SDXL's OpenCLIP pad with [`OPEN_CLIP_PAD`] instead:
/// [`ClipTokenizer::tokenize_77_with_pad`], [`ClipTokenizer::chunks_75_with_pad`].)
pub const PAD: u32 = END_OF_TEXT;
/// What SD 2.x's OpenCLIP ViT-H and SDXL's ViT-bigG pad with: 0 (the id of `!`), as open_clip's `tokenize` fills
/// its zero tensor and ComfyUI's `SD2ClipHTokenizer` / `SDXLClipGTokenizer` do (`pad_with_end=False`). The BPE is the
/// same as SD 1.x's. SDXL's CLIP-L pads with [`PAD`].
pub const OPEN_CLIP_PAD: u32 = 0;
/// Positions the CLIP text encoder takes.
pub const CONTEXT_LENGTH: usize = 77;
/// Prompt tokens that fit in one sequence beside the start and end tokens.
pub const CHUNK_TOKENS: usize = CONTEXT_LENGTH - 2;
/// Entries in the vocabulary.
pub const VOCAB_SIZE: usize = 49408;
/// Unicode version of the character data normalisation uses (Python 3.11's `unicodedata`).
pub const UNICODE_VERSION: &str = tables::UNICODE_VERSION;
/// Merge rules the vocabulary uses: `49152 - 256 - 2`, the first lines after the file's header.
const MERGES_USED: usize = VOCAB_SIZE - 512 - 2;

/// open_clip's `bpe_simple_vocab_16e6.txt.gz`: a header line, then one merge (`left right`) per line.
static VOCAB_GZ: &[u8] = include_bytes!("bpe_simple_vocab_16e6.txt.gz");

/// The tokenizer. Cloning is cheap: clones share the vocabulary and the word cache.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    /// Id -> token string (`</w>` marks the end of a word).
    tokens: Vec<String>,
    /// Token string -> id.
    ids: HashMap<String, u32>,
    /// Byte symbol -> byte, for decoding.
    byte_of: HashMap<char, u8>,
    bpe: Bpe,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer").field("vocab_size", &self.inner.tokens.len()).finish()
    }
}

impl ClipTokenizer {
    /// The tokenizer over the embedded vocabulary. The first call decompresses and builds it (tens of
    /// milliseconds); later calls share that one instance.
    pub fn new() -> Result<Self, String> {
        static SHARED: OnceLock<Result<Arc<Inner>, String>> = OnceLock::new();
        let inner = SHARED.get_or_init(|| Inner::load().map(Arc::new)).clone()?;
        Ok(ClipTokenizer { inner })
    }

    /// Token ids of `text`, without start/end tokens, padding or truncation.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        for piece in split_special_tokens(text) {
            match piece {
                Piece::Special(id) => out.push(id),
                Piece::Text(t) => {
                    let normalized = normalize::normalize(t);
                    for word in bpe::pre_tokenize(&normalized) {
                        self.inner.bpe.encode_word(word, &mut out);
                    }
                }
            }
        }
        out
    }

    /// The 77 ids the SD 1.x text encoder takes: `<|startoftext|>`, the first 75 tokens of `text`, `<|endoftext|>`,
    /// then [`PAD`] up to 77. HF's `tokenizer(text, padding="max_length", max_length=77, truncation=True)`.
    pub fn tokenize_77(&self, text: &str) -> Vec<u32> {
        self.tokenize_77_with_pad(text, PAD)
    }

    /// [`Self::tokenize_77`] padding with `pad` instead of [`PAD`].
    pub fn tokenize_77_with_pad(&self, text: &str, pad: u32) -> Vec<u32> {
        let tokens = self.encode(text);
        wrap_77(&tokens[..tokens.len().min(CHUNK_TOKENS)], pad).to_vec()
    }

    /// A long prompt as consecutive 77-id sequences, as ComfyUI feeds SD 1.x: the tokens split into runs of 75,
    /// each wrapped in start/end tokens, the last padded with [`PAD`]. Always at least one sequence (an empty
    /// prompt gives start, end, padding).
    ///
    /// This is ComfyUI's `SDTokenizer.tokenize_with_weights` (comfy/sd1_clip.py at b55c224) for prompts without its
    /// extra syntax: there, a prompt segment of 8 or more tokens is cut at exactly 75 tokens per sequence, and a
    /// plain prompt is one segment. Emphasis such as `(word:1.2)`, escaped `\(`, and `embedding:name` references
    /// are not parsed here: they are tokenized as the literal text. (Older ComfyUI tokenized word by word and
    /// moved words shorter than 8 tokens whole to the next sequence; that is not reproduced.)
    pub fn chunks_75(&self, text: &str) -> Vec<[u32; CONTEXT_LENGTH]> {
        self.chunks_75_with_pad(text, PAD)
    }

    /// [`Self::chunks_75`] padding with `pad`: [`OPEN_CLIP_PAD`] for SD 2.x's and SDXL's OpenCLIP encoders.
    pub fn chunks_75_with_pad(&self, text: &str, pad: u32) -> Vec<[u32; CONTEXT_LENGTH]> {
        let tokens = self.encode(text);
        if tokens.is_empty() {
            return vec![wrap_77(&[], pad)];
        }
        tokens.chunks(CHUNK_TOKENS).map(|chunk| wrap_77(chunk, pad)).collect()
    }

    /// Number of vocabulary entries (49,408).
    pub fn vocab_size(&self) -> usize {
        self.inner.tokens.len()
    }

    /// The id of a vocabulary entry, e.g. `"photo</w>"`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.ids.get(token).copied()
    }

    /// The vocabulary entry of an id.
    pub fn token(&self, id: u32) -> Option<&str> {
        self.inner.tokens.get(id as usize).map(String::as_str)
    }

    /// Text of `ids`, as HF's `convert_tokens_to_string`: bytes back from the byte symbols (invalid UTF-8 becomes
    /// U+FFFD), each `</w>` a space, ends stripped. Special tokens come out as their text; unknown ids are skipped.
    /// Normalisation is lossy, so this gives the normalised (lower-cased) text, not the prompt.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for token in ids.iter().filter_map(|&id| self.token(id)) {
            for c in token.chars() {
                // Every char of every vocabulary entry is a byte symbol (the special tokens are printable ASCII).
                if let Some(&b) = self.inner.byte_of.get(&c) {
                    bytes.push(b);
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes).replace("</w>", " ");
        text.trim_matches(normalize::is_python_space).to_owned()
    }
}

impl Inner {
    /// Builds the vocabulary exactly as open_clip's `SimpleTokenizer.__init__` / HF's `vocab.json` + `merges.txt`.
    fn load() -> Result<Inner, String> {
        // Only the first 48,895 of the file's 262,145 lines are used, so decompression stops there.
        let mut lines = BufReader::new(flate2::read::GzDecoder::new(VOCAB_GZ)).lines();
        let read_err = |e: std::io::Error| format!("reading the embedded CLIP vocabulary: {e}");
        lines.next().ok_or("the embedded CLIP vocabulary is empty")?.map_err(read_err)?; // "#version" header
        let mut merges = Vec::with_capacity(MERGES_USED);
        for (n, line) in lines.take(MERGES_USED).enumerate() {
            let line = line.map_err(read_err)?;
            // Python's `merge.split()`; byte symbols are never whitespace, so splitting on whitespace is exact.
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => merges.push((a.to_owned(), b.to_owned())),
                _ => return Err(format!("CLIP vocabulary line {}: expected two symbols, got {line:?}", n + 2)),
            }
        }
        if merges.len() != MERGES_USED {
            return Err(format!("CLIP vocabulary has {} merges, expected {MERGES_USED}", merges.len()));
        }

        let table = bpe::bytes_to_unicode();
        let mut tokens = Vec::with_capacity(VOCAB_SIZE);
        tokens.extend(table.iter().map(|&(_, c)| c.to_string()));
        tokens.extend(table.iter().map(|&(_, c)| format!("{c}</w>")));
        tokens.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        tokens.push("<|startoftext|>".to_owned());
        tokens.push("<|endoftext|>".to_owned());
        // As Python's `dict(zip(vocab, range(len(vocab))))`: a later duplicate would win. The real file has none,
        // and the id-based merge loop needs ids and strings one-to-one, so a duplicate is an error.
        let ids: HashMap<String, u32> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        if ids.len() != tokens.len() {
            return Err(format!("CLIP vocabulary has {} distinct entries out of {}", ids.len(), tokens.len()));
        }

        let mut byte_ids = [0u32; 256];
        for (i, &(b, _)) in table.iter().enumerate() {
            byte_ids[b as usize] = i as u32;
        }
        let id =
            |s: &str| ids.get(s).copied().ok_or_else(|| format!("CLIP merge symbol {s:?} is not in the vocabulary"));
        let mut ranks = HashMap::with_capacity(MERGES_USED);
        for (rank, (a, b)) in merges.iter().enumerate() {
            let merged = id(&format!("{a}{b}"))?;
            // `dict(zip(merges, range(..)))`: a repeated pair would keep its later rank.
            ranks.insert((id(a)?, id(b)?), Merge { rank: rank as u32, merged });
        }
        let byte_of = table.iter().map(|&(b, c)| (c, b)).collect();
        Ok(Inner { tokens, ids, byte_of, bpe: Bpe::new(byte_ids, ranks) })
    }
}

/// `[START_OF_TEXT] + tokens + [END_OF_TEXT]`, padded with `pad` to 77. `tokens` must hold at most 75 ids.
fn wrap_77(tokens: &[u32], pad: u32) -> [u32; CONTEXT_LENGTH] {
    debug_assert!(tokens.len() <= CHUNK_TOKENS);
    let mut out = [pad; CONTEXT_LENGTH];
    out[0] = START_OF_TEXT;
    out[1..=tokens.len()].copy_from_slice(tokens);
    out[tokens.len() + 1] = END_OF_TEXT;
    out
}

enum Piece<'a> {
    Special(u32),
    Text(&'a str),
}

/// HF's added-token trie split: exact (case-sensitive) `<|startoftext|>` / `<|endoftext|>` become their ids and the
/// text between them is tokenized separately. Neither string can overlap the other, so a left-to-right scan for
/// the earliest occurrence is the trie's leftmost-longest match.
fn split_special_tokens(text: &str) -> Vec<Piece<'_>> {
    const SPECIAL: [(&str, u32); 2] = [("<|startoftext|>", START_OF_TEXT), ("<|endoftext|>", END_OF_TEXT)];
    let mut pieces = Vec::new();
    // Start of the current text piece, and where to look for the next "<|".
    let (mut start, mut pos) = (0, 0);
    while let Some(off) = text[pos..].find("<|") {
        let at = pos + off;
        match SPECIAL.iter().find(|(s, _)| text[at..].starts_with(s)) {
            Some(&(s, id)) => {
                if at > start {
                    pieces.push(Piece::Text(&text[start..at]));
                }
                pieces.push(Piece::Special(id));
                start = at + s.len();
                pos = start;
            }
            None => pos = at + 2,
        }
    }
    if start < text.len() {
        pieces.push(Piece::Text(&text[start..]));
    }
    pieces
}
