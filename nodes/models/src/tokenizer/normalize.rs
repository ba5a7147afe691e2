//! Text normalisation of Hugging Face transformers' slow `CLIPTokenizer` (4.57.6) when `ftfy` is not installed.
//!
//! `CLIPTokenizer._tokenize` then runs `" ".join(BasicTokenizer(strip_accents=False,
//! do_split_on_punc=False).tokenize(text))`, which is, step by step:
//!
//! 1. `_clean_text`: delete U+0000, U+FFFD and every general category C* character (Cc, Cf, Co, Cs and unassigned
//!    Cn) except tab, LF and CR; map tab, LF, CR and category Zs to a space. Note that VT, FF, U+0085 and the
//!    zero-width joiner are *deleted*, not turned into spaces.
//! 2. `_tokenize_chinese_chars`: put spaces around CJK ideographs (the BERT ranges), so each becomes its own word.
//! 3. `unicodedata.normalize("NFC", ..)`.
//! 4. `str.split()` on Python whitespace, then `str.lower()` each piece (`strip_accents=False` skips accent
//!    stripping; `do_split_on_punc=False` skips punctuation splitting), and join the pieces with single spaces.
//!
//! General categories and NFC data come from [`super::tables`], generated from Python 3.11's `unicodedata` (Unicode
//! 14.0.0), because the reference depends on them and Rust's std has neither. Lower-casing uses Rust's
//! `char::to_lowercase` for the per-character full mappings (İ → i̇), which agree with Python's for every character
//! the cleaning step keeps (checked exhaustively with the fixture generator's `--exhaustive`, and the committed
//! fixture lower-cases every cased character), but decides final sigma with Python's tables (see
//! [`lowercase_into`]).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::OnceLock;

use super::tables;

/// Whether `cp` lies in one of the sorted, inclusive, disjoint `ranges`.
pub(crate) fn in_ranges(ranges: &[(u32, u32)], cp: u32) -> bool {
    ranges.binary_search_by(|&(lo, hi)| range_cmp(lo, hi, cp)).is_ok()
}

/// Where the inclusive range `lo..=hi` lies relative to `cp` (`Equal`: it holds `cp`), for binary searches over
/// sorted, disjoint ranges.
fn range_cmp(lo: u32, hi: u32, cp: u32) -> Ordering {
    if hi < cp {
        Ordering::Less
    } else if lo > cp {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

/// transformers' `_is_control` plus the two code points `_clean_text` drops explicitly (U+0000, U+FFFD).
fn is_removed(c: char) -> bool {
    in_ranges(tables::REMOVED, c as u32)
}

/// transformers' `_is_whitespace`: space, tab, LF, CR, or category Zs.
fn is_bert_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r') || tables::ZS.binary_search(&(c as u32)).is_ok()
}

/// Python's `str.isspace()`, which `str.split()` splits on.
pub(crate) fn is_python_space(c: char) -> bool {
    tables::PY_SPACE.binary_search(&(c as u32)).is_ok()
}

/// BERT's "Chinese character" ranges (`BasicTokenizer._is_chinese_char`): CJK Unified Ideographs and extensions,
/// and CJK Compatibility Ideographs. Hiragana, Katakana and Hangul are deliberately not included.
fn is_cjk_ideograph(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

/// The whole normalisation: the text the pre-tokenising pattern then runs over.
pub(crate) fn normalize(text: &str) -> String {
    // Steps 1 and 2.
    let mut cleaned = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_removed(c) {
            continue;
        }
        if is_bert_whitespace(c) {
            cleaned.push(' ');
        } else if is_cjk_ideograph(c) {
            cleaned.push(' ');
            cleaned.push(c);
            cleaned.push(' ');
        } else {
            cleaned.push(c);
        }
    }
    // Step 3.
    let composed = nfc(&cleaned);
    // Step 4. Lower-casing never yields whitespace, so BasicTokenizer's second whitespace split is a no-op.
    let mut out = String::with_capacity(composed.len());
    for word in composed.split(is_python_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        lowercase_into(word, &mut out);
    }
    out
}

/// Python's `str.lower`: each character's full lower-case mapping (Rust's `char::to_lowercase`, identical for every
/// character normalisation keeps), except that a capital sigma becomes final `ς` in the Final_Sigma context, decided
/// with Python's Cased / Case_Ignorable properties. (Rust's `str::to_lowercase` applies the same rule with its
/// own, newer properties, which differ for U+0295 and U+1171E.)
fn lowercase_into(word: &str, out: &mut String) {
    if word.is_ascii() {
        out.extend(word.chars().map(|c| c.to_ascii_lowercase()));
        return;
    }
    let chars: Vec<char> = word.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '\u{3A3}' {
            out.push(if is_final_sigma(&chars, i) { '\u{3C2}' } else { '\u{3C3}' });
        } else {
            out.extend(c.to_lowercase());
        }
    }
}

/// CPython's `handle_capital_sigma`: `\p{Cased} \p{Case_Ignorable}* Σ !(\p{Case_Ignorable}* \p{Cased})`.
fn is_final_sigma(chars: &[char], i: usize) -> bool {
    let ignorable = |c: &&char| in_ranges(tables::CASE_IGNORABLE, **c as u32);
    let cased = |c: &char| in_ranges(tables::CASED, *c as u32);
    let before = chars[..i].iter().rev().find(|c| !ignorable(c));
    let after = chars[i + 1..].iter().find(|c| !ignorable(c));
    before.is_some_and(cased) && !after.is_some_and(cased)
}

// ---- NFC (UAX #15), over the tables CPython's `unicodedata` uses. ----

const S_BASE: u32 = 0xAC00;
const L_BASE: u32 = 0x1100;
const V_BASE: u32 = 0x1161;
const T_BASE: u32 = 0x11A7;
const L_COUNT: u32 = 19;
const V_COUNT: u32 = 21;
const T_COUNT: u32 = 28;
const N_COUNT: u32 = V_COUNT * T_COUNT;
const S_COUNT: u32 = L_COUNT * N_COUNT;

fn ccc(cp: u32) -> u8 {
    match tables::CCC.binary_search_by(|&(lo, hi, _)| range_cmp(lo, hi, cp)) {
        Ok(i) => tables::CCC[i].2,
        Err(_) => 0,
    }
}

fn decompose_single(cp: u32) -> Option<u32> {
    // The run starting at or before `cp`.
    let i = tables::DECOMP_SINGLE.partition_point(|&(start, _)| start <= cp).checked_sub(1)?;
    let (start, targets) = tables::DECOMP_SINGLE[i];
    targets.get((cp - start) as usize).copied()
}

/// Full canonical decomposition of `cp`, appended to `out`.
fn decompose(cp: u32, out: &mut Vec<u32>) {
    if (S_BASE..S_BASE + S_COUNT).contains(&cp) {
        let s = cp - S_BASE;
        out.push(L_BASE + s / N_COUNT);
        out.push(V_BASE + (s % N_COUNT) / T_COUNT);
        if !s.is_multiple_of(T_COUNT) {
            out.push(T_BASE + s % T_COUNT);
        }
    } else if let Ok(i) = tables::DECOMP_PAIR.binary_search_by_key(&cp, |&(c, _, _)| c) {
        let (_, a, b) = tables::DECOMP_PAIR[i];
        decompose(a, out);
        decompose(b, out);
    } else if let Some(t) = decompose_single(cp) {
        decompose(t, out);
    } else {
        out.push(cp);
    }
}

/// Primary composites: `(first, second) -> composite`.
fn compositions() -> &'static HashMap<(u32, u32), u32> {
    static MAP: OnceLock<HashMap<(u32, u32), u32>> = OnceLock::new();
    MAP.get_or_init(|| {
        tables::DECOMP_PAIR
            .iter()
            .filter(|(c, _, _)| tables::COMPOSITION_EXCLUDED.binary_search(c).is_err())
            .map(|&(c, a, b)| ((a, b), c))
            .collect()
    })
}

fn compose_pair(a: u32, b: u32) -> Option<u32> {
    if (L_BASE..L_BASE + L_COUNT).contains(&a) && (V_BASE..V_BASE + V_COUNT).contains(&b) {
        return Some(S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT);
    }
    if (S_BASE..S_BASE + S_COUNT).contains(&a)
        && (a - S_BASE).is_multiple_of(T_COUNT)
        && (T_BASE + 1..T_BASE + T_COUNT).contains(&b)
    {
        return Some(a + (b - T_BASE));
    }
    compositions().get(&(a, b)).copied()
}

/// Unicode Normalization Form C.
pub(crate) fn nfc(s: &str) -> String {
    // Nothing below U+0300 decomposes, combines or recomposes, so such text is already NFC.
    if s.chars().all(|c| (c as u32) < 0x300) {
        return s.to_owned();
    }
    let mut d = Vec::with_capacity(s.len());
    for c in s.chars() {
        decompose(c as u32, &mut d);
    }
    // Canonical ordering: stable sort of each run of non-starters by combining class.
    let classes: Vec<u8> = d.iter().map(|&c| ccc(c)).collect();
    let mut pairs: Vec<(u32, u8)> = d.into_iter().zip(classes).collect();
    let mut i = 0;
    while i < pairs.len() {
        if pairs[i].1 == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < pairs.len() && pairs[i].1 != 0 {
            i += 1;
        }
        pairs[start..i].sort_by_key(|&(_, k)| k);
    }
    // Canonical composition.
    let mut out: Vec<(u32, u8)> = Vec::with_capacity(pairs.len());
    let mut starter: Option<usize> = None;
    for (c, k) in pairs {
        if let Some(si) = starter {
            // Blocked when something sits between the starter and `c` whose class is 0 or not below c's. The
            // ordering above makes the last such character the one with the largest class.
            let blocked = out.len() - 1 > si && {
                let last = out[out.len() - 1].1;
                last == 0 || last >= k
            };
            if !blocked && let Some(composite) = compose_pair(out[si].0, c) {
                out[si].0 = composite;
                continue;
            }
        }
        if k == 0 {
            starter = Some(out.len());
        }
        out.push((c, k));
    }
    // The tables only hold valid scalar values, and composition yields assigned characters.
    out.into_iter().filter_map(|(c, _)| char::from_u32(c)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `f(text) == want` for every (text, want).
    fn check(f: fn(&str) -> String, cases: &[(&str, &str)]) {
        for &(text, want) in cases {
            assert_eq!(f(text), want, "{text:?}");
        }
    }

    #[test]
    fn nfc_composes_and_reorders() {
        let cases = [
            ("e\u{301}", "\u{e9}"),
            // Dot below (220) sorts before acute (230); q has no precomposed forms.
            ("q\u{301}\u{323}", "q\u{323}\u{301}"),
            // s + dot above + dot below -> U+1E69 (s with dot below and dot above).
            ("s\u{307}\u{323}", "\u{1E69}"),
            // Hangul jamo L V T -> syllable; singleton U+212B ANGSTROM SIGN -> U+00C5.
            ("\u{1100}\u{1161}\u{11A8}", "\u{AC01}"),
            ("\u{212B}", "\u{C5}"),
            // U+0344 is a composition exclusion: it decomposes and does not come back.
            ("\u{344}", "\u{308}\u{301}"),
        ];
        check(nfc, &cases);
    }

    #[test]
    fn normalize_cleans_splits_and_lowercases() {
        let cases = [
            ("  A\tPhoto\n\rOF\u{3000}a  CAT ", "a photo of a cat"),
            // VT/FF and ZWJ are deleted rather than turned into spaces.
            ("a\u{b}b\u{c}c\u{200d}d", "abcd"),
            ("猫猫", "猫 猫"),
            // Final sigma at the end of a word only.
            ("ΟΔΟΣ ΣΑΣ", "\u{3BF}\u{3B4}\u{3BF}\u{3C2} \u{3C3}\u{3B1}\u{3C2}"),
            // U+0295 is Cased in Unicode 14 (Python 3.11), so the sigma after it is final.
            ("\u{295}\u{3A3}", "\u{295}\u{3C2}"),
            ("", ""),
            (" \t\n ", ""),
        ];
        check(normalize, &cases);
    }
}
