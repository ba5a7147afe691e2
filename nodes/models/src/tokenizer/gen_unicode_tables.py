#!/usr/bin/env python3
"""Generates nodes/models/src/tokenizer/tables.rs: the Unicode data the CLIP tokenizer's text normalisation needs.

The reference (Hugging Face transformers' slow CLIPTokenizer without ftfy) asks Python's `unicodedata` for general
categories and NFC, and the `regex` module for `\\p{L}` / `\\p{N}` / `\\s`. Rust's std has neither NFC nor general
categories (`char::is_alphabetic` is the Alphabetic property, a superset of L), so this script dumps exactly what
the reference consults, from the same interpreter and `regex` build the fixture generator uses:

    python3 -m venv /tmp/hf4 && /tmp/hf4/bin/pip install 'transformers==4.57.6' 'regex==2026.11.15'
    /tmp/hf4/bin/python nodes/models/src/tokenizer/gen_unicode_tables.py > nodes/models/src/tokenizer/tables.rs

Python 3.11 ships Unicode 14.0.0; a different Python gives a different (newer) table, so the script refuses to run
on another Unicode version unless given --any-unicode.

Tables are kept small by merging ranges across code points that `BasicTokenizer._clean_text` deletes (category C*,
which includes every unassigned code point): those never reach NFC, lower-casing or the pre-tokeniser, so their
table value is irrelevant.
"""

import sys
import unicodedata

import regex

EXPECTED_UNICODE = "14.0.0"
MAX_CP = 0x110000


def is_surrogate(cp):
    return 0xD800 <= cp <= 0xDFFF


def removed(cp):
    """transformers' BasicTokenizer._clean_text drops cp 0, U+FFFD and `_is_control` (category C*, not \\t\\n\\r)."""
    if is_surrogate(cp):
        return True
    c = chr(cp)
    if cp == 0 or cp == 0xFFFD:
        return True
    return c not in "\t\n\r" and unicodedata.category(c).startswith("C")


def exact_ranges(pred):
    out = []
    for cp in range(MAX_CP):
        if pred(cp):
            if out and out[-1][1] == cp - 1:
                out[-1][1] = cp
            else:
                out.append([cp, cp])
    return out


def dont_care_ranges(pred):
    """Ranges covering every kept cp where pred holds and no kept cp where it does not; removed cps are free."""
    out = []
    open_range = False
    for cp in range(MAX_CP):
        if removed(cp):
            continue
        if pred(cp):
            if open_range:
                out[-1][1] = cp
            else:
                out.append([cp, cp])
                open_range = True
        else:
            open_range = False
    return out


def fmt_rows(items, indent="    ", width=120):
    """Items separated by spaces, as many per line as fit in `width` columns."""
    lines = [indent]
    for item in items:
        if len(lines[-1]) > len(indent) and len(lines[-1]) + 1 + len(item) > width:
            lines.append(indent)
        lines[-1] += (" " if len(lines[-1]) > len(indent) else "") + item
    return "\n".join(lines)


def emit_ranges(name, doc, ranges):
    items = [f"(0x{a:X}, 0x{b:X})," for a, b in ranges]
    return f"{doc}\n#[rustfmt::skip]\npub(crate) static {name}: &[(u32, u32)] = &[\n{fmt_rows(items)}\n];\n"


def emit_list(name, doc, cps):
    items = [f"0x{c:X}," for c in cps]
    return f"{doc}\n#[rustfmt::skip]\npub(crate) static {name}: &[u32] = &[\n{fmt_rows(items)}\n];\n"


def main():
    if unicodedata.unidata_version != EXPECTED_UNICODE and "--any-unicode" not in sys.argv:
        sys.exit(f"unicodedata is {unicodedata.unidata_version}, expected {EXPECTED_UNICODE} (Python 3.11)")

    ic = regex.IGNORECASE
    # The character classes of CLIP's pre-tokenising pattern, compiled the way transformers compiles it (IGNORECASE).
    re_l = regex.compile(r"[\p{L}]", ic)
    re_n = regex.compile(r"[\p{N}]", ic)
    re_o = regex.compile(r"[^\s\p{L}\p{N}]", ic)
    re_s = regex.compile(r"\s", ic)

    def cls(cp):
        c = chr(cp)
        return (bool(re_l.fullmatch(c)), bool(re_n.fullmatch(c)), bool(re_o.fullmatch(c)), bool(re_s.fullmatch(c)))

    classes = {cp: cls(cp) for cp in range(MAX_CP) if not removed(cp)}
    for cp, k in classes.items():
        assert sum(k) <= 1, (hex(cp), k)
    letter = dont_care_ranges(lambda cp: classes[cp][0])
    number = dont_care_ranges(lambda cp: classes[cp][1])
    space = [cp for cp, k in classes.items() if k[3]]
    # Matched by no alternative of the pattern: the scan skips them like whitespace.
    unmatched = [cp for cp, k in classes.items() if not any(k)]

    # Literal letters of the pattern ('s, <|startoftext|>, ...) match case-insensitively; check the only
    # non-ASCII simple case fold among them is U+017F LATIN SMALL LETTER LONG S ~ s, which bpe.rs hard-codes.
    for ch in "sternvmldaofx":
        folds = {cp for cp in range(MAX_CP) if not is_surrogate(cp) and regex.fullmatch(ch, chr(cp), ic)}
        expected = {ord(ch), ord(ch.upper())} | ({0x17F} if ch == "s" else set())
        assert folds == expected, (ch, sorted(map(hex, folds)))

    # Final_Sigma, as CPython's str.lower decides it: a capital sigma becomes final when the first character before
    # it that is not Case_Ignorable is Cased, and the first after it that is not Case_Ignorable is not Cased.
    # CPython keeps both properties private, so probe them through str.lower itself. Cased-ness of a
    # Case_Ignorable character never matters (the scan skips it), so the second table holds Cased and not
    # Case_Ignorable. (Rust's str::to_lowercase runs the same rule, but on its own Unicode version's properties.)
    def sigma_probe(cp):
        c = chr(cp)
        cased_not_ignorable = (c + "\u03a3").lower().endswith("\u03c2")
        neither = "\u03c2" in ("a\u03a3" + c + "b").lower()
        ignorable_or_cased = ("a" + c + "\u03a3").lower().endswith("\u03c2")
        ignorable = not (cased_not_ignorable or neither)
        assert ignorable_or_cased == (ignorable or cased_not_ignorable), hex(cp)
        return ignorable, cased_not_ignorable

    sigma = {cp: sigma_probe(cp) for cp in range(MAX_CP) if not removed(cp)}
    case_ignorable = dont_care_ranges(lambda cp: sigma[cp][0])
    cased = dont_care_ranges(lambda cp: sigma[cp][1])

    removed_ranges = exact_ranges(removed)
    zs = [cp for cp in range(MAX_CP) if not is_surrogate(cp) and unicodedata.category(chr(cp)) == "Zs"]
    py_space = [cp for cp in range(MAX_CP) if chr(cp).isspace()]

    # NFC data: canonical combining classes, single-step canonical decompositions, and the two-character
    # decompositions that are NOT primary composites (composition exclusions, singletons are implicit).
    ccc = []
    for cp in range(MAX_CP):
        if is_surrogate(cp):
            continue
        v = unicodedata.combining(chr(cp))
        if v:
            if ccc and ccc[-1][1] == cp - 1 and ccc[-1][2] == v:
                ccc[-1][1] = cp
            else:
                ccc.append([cp, cp, v])
    pairs = []
    singles = []
    excluded = []
    for cp in range(MAX_CP):
        if is_surrogate(cp) or 0xAC00 <= cp <= 0xD7A3:  # Hangul syllables are algorithmic
            continue
        d = unicodedata.decomposition(chr(cp))
        if not d or d.startswith("<"):
            continue
        parts = [int(x, 16) for x in d.split()]
        assert len(parts) in (1, 2), hex(cp)
        if len(parts) == 1:
            # Singletons (mostly CJK compatibility ideographs) come in runs of consecutive code points.
            if singles and singles[-1][0] + len(singles[-1][1]) == cp:
                singles[-1][1].append(parts[0])
            else:
                singles.append((cp, [parts[0]]))
            continue
        pairs.append((cp, parts[0], parts[1]))
        if unicodedata.normalize("NFC", chr(cp)) != chr(cp):
            excluded.append(cp)

    header = (
        "//! Unicode data for the CLIP tokenizer's text normalisation.\n"
        "//! GENERATED by gen_unicode_tables.py; do not edit.\n"
        "//!\n"
        f"//! Source: Python {sys.version.split()[0]} `unicodedata` (Unicode {unicodedata.unidata_version}) "
        f"and `regex` {regex.__version__}.\n"
        "//! Ranges are inclusive and sorted. LETTER and NUMBER ranges may span code points in REMOVED, which\n"
        "//! normalisation deletes before anything consults them.\n"
    )
    version = (
        "/// Unicode version of every table here (Python 3.11's `unicodedata`).\n"
        f'pub(crate) const UNICODE_VERSION: &str = "{unicodedata.unidata_version}";\n'
    )
    out = [header, version]
    out.append(
        emit_ranges(
            "REMOVED",
            "/// Deleted by `BasicTokenizer._clean_text`: general category C* (Cc Cf Cs Co Cn) except tab, LF and CR,\n"
            "/// plus U+0000 and U+FFFD.",
            removed_ranges,
        )
    )
    out.append(emit_list("ZS", "/// General category Zs: `_clean_text` maps these (and tab, LF, CR) to a space.", zs))
    out.append(emit_list("PY_SPACE", "/// Python `str.isspace()`: what `str.split()` splits on.", py_space))
    out.append(emit_ranges("LETTER", "/// `[\\p{L}]` under IGNORECASE, as the `regex` module matches it.", letter))
    out.append(emit_ranges("NUMBER", "/// `[\\p{N}]` under IGNORECASE.", number))
    out.append(emit_list("REGEX_SPACE", "/// `\\s` (Unicode White_Space), code points normalisation keeps.", space))
    out.append(
        emit_list(
            "UNMATCHED",
            "/// Kept by normalisation but matched by no alternative of the pattern: under IGNORECASE U+0345's case\n"
            "/// partner is a letter, so `[^\\s\\p{L}\\p{N}]` rejects it, yet `[\\p{L}]` does not accept it either.",
            unmatched,
        )
    )
    out.append(
        emit_ranges(
            "CASE_IGNORABLE",
            "/// Case_Ignorable, as Python's `str.lower` sees it when placing a final sigma.",
            case_ignorable,
        )
    )
    out.append(emit_ranges("CASED", "/// Cased and not Case_Ignorable, as Python's `str.lower` sees it.", cased))
    items = [f"(0x{a:X}, 0x{b:X}, {v})," for a, b, v in ccc]
    out.append(
        "/// Canonical combining class, for code points where it is not 0.\n"
        f"#[rustfmt::skip]\npub(crate) static CCC: &[(u32, u32, u8)] = &[\n{fmt_rows(items)}\n];\n"
    )
    items = [f"(0x{a:X}, 0x{b:X}, 0x{c:X})," for a, b, c in pairs]
    out.append(
        "/// Canonical decompositions to two characters `(cp, first, second)`, one step (apply recursively).\n"
        "/// Hangul syllables are left out: their decomposition is algorithmic.\n"
        f"#[rustfmt::skip]\npub(crate) static DECOMP_PAIR: &[(u32, u32, u32)] = &[\n{fmt_rows(items)}\n];\n"
    )
    runs = []
    for start, targets in singles:
        body = fmt_rows([f"0x{t:X}," for t in targets], indent="        ")
        runs.append(f"    (0x{start:X}, &[\n{body}\n    ]),")
    out.append(
        "/// Canonical decompositions to one character, as runs `(first cp, [its target, next cp's target, ..])`.\n"
        "/// Singletons never recompose.\n"
        "#[rustfmt::skip]\npub(crate) static DECOMP_SINGLE: &[(u32, &[u32])] = &[\n" + "\n".join(runs) + "\n];\n"
    )
    out.append(
        emit_list(
            "COMPOSITION_EXCLUDED",
            "/// Two-character decompositions canonical composition must not recreate (full composition exclusions).",
            excluded,
        )
    )
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main()
