//! CLIP's byte-level BPE: the byte encoder, the pre-tokenising pattern and the merge loop.
//!
//! Mirrors `bytes_to_unicode`, `CLIPTokenizer.pat` and `CLIPTokenizer.bpe` of Hugging Face transformers 4.57.6
//! (`models/clip/tokenization_clip.py`), which are in turn open_clip's / OpenAI CLIP's `SimpleTokenizer`.
//!
//! Symbols are handled as vocabulary ids rather than strings: every symbol the merge loop can produce (a byte,
//! a byte + `</w>`, or the concatenation named by a merge rule) is a vocabulary entry, and the vocabulary maps
//! strings to ids one-to-one, so merging ids is the same computation as merging the Python tuples of strings.

use std::collections::HashMap;
use std::sync::Mutex;

use super::normalize::in_ranges;
use super::tables;
use super::{END_OF_TEXT, START_OF_TEXT};

/// GPT-2 / CLIP `bytes_to_unicode`, as the list of bytes in vocabulary order with the char each stands for.
///
/// Printable Latin-1 bytes (`!`..=`~`, `¡`..=`¬`, `®`..=`ÿ`) stand for themselves; the other 68 bytes (controls,
/// space, NBSP, soft hyphen) are shifted to U+0100 onwards in increasing byte order, so that no symbol is whitespace
/// or a control character. The position in this list is the byte's vocabulary id (and + 256 with `</w>`).
pub(crate) fn bytes_to_unicode() -> [(u8, char); 256] {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let kept = (0..=255u8).filter(|&b| printable(b)).map(|b| (b, char::from(b)));
    let shifted = (0..=255u8)
        .filter(|&b| !printable(b))
        .zip(0x100..)
        .map(|(b, cp)| (b, char::from_u32(cp).expect("U+0100..=U+0143 are chars")));
    let mut out = [(0u8, '\0'); 256];
    for (slot, entry) in out.iter_mut().zip(kept.chain(shifted)) {
        *slot = entry;
    }
    out
}

/// A merge rule: its rank (lower merges first) and the id of the merged symbol.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Merge {
    pub rank: u32,
    pub merged: u32,
}

/// Cached words above this count make the cache start over (the reference cache grows without bound).
const CACHE_LIMIT: usize = 1 << 16;

/// The merge table plus a cache of finished words, like `CLIPTokenizer.cache`.
pub(crate) struct Bpe {
    /// Vocabulary id of each byte as a non-final symbol; the final symbol of a word is this + 256 (`</w>`).
    byte_ids: [u32; 256],
    merges: HashMap<(u32, u32), Merge>,
    cache: Mutex<HashMap<String, Vec<u32>>>,
}

impl Bpe {
    pub(crate) fn new(byte_ids: [u32; 256], merges: HashMap<(u32, u32), Merge>) -> Self {
        Bpe { byte_ids, merges, cache: Mutex::new(HashMap::new()) }
    }

    /// Appends the ids of one pre-token.
    pub(crate) fn encode_word(&self, word: &str, out: &mut Vec<u32>) {
        // The reference seeds its cache with the two special tokens, so the pattern's special-token
        // alternatives (which only ever see lower-cased text) come out as the special ids, not as BPE.
        match word {
            "<|startoftext|>" => return out.push(START_OF_TEXT),
            "<|endoftext|>" => return out.push(END_OF_TEXT),
            "" => return,
            _ => {}
        }
        // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
        if let Some(ids) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(word) {
            out.extend_from_slice(ids);
            return;
        }
        let ids = self.merge(word.as_bytes());
        out.extend_from_slice(&ids);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_LIMIT {
            cache.clear();
        }
        cache.insert(word.to_owned(), ids);
    }

    /// `CLIPTokenizer.bpe` on the byte-encoded word: start from one symbol per byte, the last carrying `</w>`, and
    /// repeatedly merge every occurrence (left to right, non-overlapping) of the adjacent pair with the lowest rank.
    fn merge(&self, bytes: &[u8]) -> Vec<u32> {
        let mut word: Vec<u32> = bytes.iter().map(|&b| self.byte_ids[b as usize]).collect();
        if let Some(last) = word.last_mut() {
            *last += 256;
        }
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|p| self.merges.get(&(p[0], p[1])).map(|m| (m.rank, p[0], p[1], m.merged)))
                .min_by_key(|&(rank, ..)| rank);
            let Some((_, first, second, merged)) = best else { break };
            let mut next = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if word[i] == first && i + 1 < word.len() && word[i + 1] == second {
                    next.push(merged);
                    i += 2;
                } else {
                    next.push(word[i]);
                    i += 1;
                }
            }
            word = next;
        }
        word
    }
}

/// Which alternative of the pattern a character can start or continue.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    /// `[\p{L}]`
    Letter,
    /// `[\p{N}]`
    Number,
    /// `[^\s\p{L}\p{N}]`
    Other,
    /// Matched by no alternative (`\s`, and U+0345): the scan steps over it.
    Skip,
}

fn class(c: char) -> Class {
    if c.is_ascii() {
        return if c.is_ascii_alphabetic() {
            Class::Letter
        } else if c.is_ascii_digit() {
            Class::Number
        } else if matches!(c, ' ' | '\t' | '\n' | '\u{b}' | '\u{c}' | '\r') {
            Class::Skip
        } else {
            Class::Other
        };
    }
    let cp = c as u32;
    if in_ranges(tables::LETTER, cp) {
        Class::Letter
    } else if in_ranges(tables::NUMBER, cp) {
        Class::Number
    } else if tables::REGEX_SPACE.binary_search(&cp).is_ok() || tables::UNMATCHED.binary_search(&cp).is_ok() {
        Class::Skip
    } else {
        Class::Other
    }
}

/// Case-insensitive match of an ASCII literal at the start of `chars`, as the `regex` module does under
/// IGNORECASE (simple case folding: besides ASCII case, U+017F LONG S folds to `s`; the table generator checks
/// no other character folds onto a letter of the pattern). Returns the number of chars matched.
fn match_literal(chars: &[char], literal: &str) -> Option<usize> {
    let n = literal.len();
    if chars.len() < n {
        return None;
    }
    let ok = literal
        .bytes()
        .zip(chars)
        .all(|(p, &c)| c.eq_ignore_ascii_case(&char::from(p)) || (p == b's' && c == '\u{17f}'));
    ok.then_some(n)
}

/// The alternatives of the pattern that are literals, in the pattern's order.
const LITERALS: [&str; 9] = ["<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d"];

/// `re.findall(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
/// text, re.IGNORECASE)`, over text that [`super::normalize::normalize`] produced (the character tables are only
/// exact for characters normalisation keeps).
///
/// Like the regex engine, at each position the first alternative that matches wins (leftmost-first, not
/// longest), and a position where none matches is skipped.
pub(crate) fn pre_tokenize(text: &str) -> Vec<&str> {
    let chars: Vec<char> = text.chars().collect();
    let mut offsets: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    offsets.push(text.len());
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let len = if let Some(n) = LITERALS.iter().find_map(|lit| match_literal(&chars[i..], lit)) {
            n
        } else {
            match class(chars[i]) {
                // `[\p{N}]` has no `+`: every digit is its own pre-token.
                Class::Number => 1,
                Class::Skip => 0,
                run => chars[i..].iter().take_while(|&&c| class(c) == run).count(),
            }
        };
        if len == 0 {
            i += 1;
        } else {
            out.push(&text[offsets[i]..offsets[i + len]]);
            i += len;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_encoder_matches_gpt2_table() {
        let table = bytes_to_unicode();
        // Printable bytes first, in order, mapping to themselves.
        assert_eq!(table[0], (b'!', '!'));
        assert_eq!(table[93], (b'~', '~'));
        assert_eq!(table[94], (0xA1, '¡'));
        assert_eq!(table[187], (0xFF, 'ÿ'));
        // Then the 68 others from byte 0, starting at U+0100: space is the 33rd of them -> U+0120 'Ġ'.
        assert_eq!(table[188], (0x00, '\u{100}'));
        assert_eq!(table[188 + 32], (b' ', '\u{120}'));
        assert_eq!(table[255], (0xAD, '\u{143}'));
        let mut bytes: Vec<u8> = table.iter().map(|&(b, _)| b).collect();
        bytes.sort_unstable();
        assert_eq!(bytes, (0..=255u8).collect::<Vec<_>>());
        assert!(table.iter().all(|&(_, c)| !c.is_whitespace() && !c.is_control()));
    }

    #[test]
    fn merge_loop_applies_lowest_rank_first_and_all_occurrences() {
        // Bytes a, b are ids 0, 1 (a non-final symbol) and 256, 257 (final, with </w>).
        let mut byte_ids = [0u32; 256];
        for (i, id) in byte_ids.iter_mut().enumerate() {
            *id = i as u32;
        }
        let (a, b) = (u32::from(b'a'), u32::from(b'b'));
        let mut merges = HashMap::new();
        // Rank 0: "a a" -> 1000, rank 1: "1000 b</w>" -> 1001, rank 2: "a b" -> 1002 (never reached for "aab").
        merges.insert((a, a), Merge { rank: 0, merged: 1000 });
        merges.insert((1000, b + 256), Merge { rank: 1, merged: 1001 });
        merges.insert((a, b + 256), Merge { rank: 2, merged: 1002 });
        let bpe = Bpe::new(byte_ids, merges);
        assert_eq!(bpe.merge(b"aab"), vec![1001]);
        // "aaab": the left "a a" pair merges first, leaving "aa a b</w>"; then "a b</w>" (rank 2).
        assert_eq!(bpe.merge(b"aaab"), vec![1000, 1002]);
        // "aaaab": both non-overlapping "a a" pairs merge in one pass, then "1000 b</w>".
        assert_eq!(bpe.merge(b"aaaab"), vec![1000, 1001]);
        // "aaaa": the final a carries </w>, so only the first pair is "a a".
        assert_eq!(bpe.merge(b"aaaa"), vec![1000, a, a + 256]);
        // A single byte is just the byte with </w>.
        assert_eq!(bpe.merge(b"b"), vec![b + 256]);
        let mut out = Vec::new();
        bpe.encode_word("aab", &mut out);
        bpe.encode_word("aab", &mut out); // from the cache
        bpe.encode_word("<|endoftext|>", &mut out);
        assert_eq!(out, vec![1001, 1001, END_OF_TEXT]);
    }

    #[test]
    fn pre_tokenizer_follows_the_pattern() {
        assert_eq!(pre_tokenize("a photo's 12 cats!!"), ["a", "photo", "'s", "1", "2", "cats", "!!"]);
        // Contractions only at the start of a match: inside a punctuation run the apostrophe is just punctuation.
        assert_eq!(pre_tokenize("!'s it'll"), ["!'", "s", "it", "'ll"]);
        assert_eq!(pre_tokenize("x<|endoftext|>y"), ["x", "<|endoftext|>", "y"]);
        assert_eq!(pre_tokenize("!<|endoftext|>"), ["!<|", "endoftext", "|>"]);
        // Long s folds to s under IGNORECASE.
        assert_eq!(pre_tokenize("'\u{17f}"), ["'\u{17f}"]);
        // Combining marks are not letters; U+0345 matches nothing at all.
        assert_eq!(pre_tokenize("e\u{301}x"), ["e", "\u{301}", "x"]);
        assert_eq!(pre_tokenize("!\u{345}!"), ["!", "!"]);
        assert!(pre_tokenize("").is_empty());
    }
}
