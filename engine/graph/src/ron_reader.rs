//! A hand-written reader for RON (Rusty Object Notation) that records the
//! source position of every value, so that later stages (schema, validation)
//! can point at a line and column. The `ron` crate's `Value` keeps neither
//! positions nor struct names, which is why this reader exists.
//!
//! Graph files are untrusted: the reader never panics, runs in linear time,
//! refuses input over `max_bytes` and never nests deeper than `max_depth`.
//!
//! Supported: whitespace, `//` and (nested) `/* */` comments, leading
//! `#![enable(...)]` attributes (skipped; extensions such as `implicit_some`
//! do not change how values are read), bools, integers from -2^63 to 2^64 - 1
//! (decimal, `0x`, `0o`, `0b`, `_` separators), floats (`1.5`, `1.`, `.5`,
//! `1e3`, `inf`, `NaN`), strings with escapes, raw strings, chars, `()`,
//! `None`/`Some(v)`, lists, maps, structs and tuples (named or not) and bare
//! identifiers. Not supported: byte strings, number suffixes (`1u8`).
//! Unlike the `ron` crate, JSON-style `\uXXXX` escapes are accepted and `( )`
//! with a space inside is unit, like `()`.

use super::spanned::{Pos, RonValue, SValue, Spanned};

/// Limits that keep hostile input from crashing or hanging the reader.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Largest accepted file, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted nesting of lists, maps, structs and tuples.
    pub max_depth: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self { max_bytes: 16 << 20, max_depth: 64 }
    }
}

/// A syntax error with the position where reading stopped.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Reads one RON value from `src` (the whole text must be that one value,
/// optionally preceded by `#![enable(...)]` attributes).
pub fn read(src: &str, limits: ReadLimits) -> Result<SValue, SyntaxError> {
    if src.len() > limits.max_bytes {
        let message = format!("file is {} bytes, larger than the limit of {} bytes", src.len(), limits.max_bytes);
        return Err(SyntaxError { pos: START, message });
    }
    let mut r = Reader { src, at: START, depth: 0, max_depth: limits.max_depth };
    r.skip_ws()?;
    r.attributes()?;
    let value = r.value()?;
    r.skip_ws()?;
    match r.peek() {
        None => Ok(value),
        Some(c) => Err(r.error(format!("unexpected trailing characters after the value, found {}", show(c)))),
    }
}

const START: Pos = Pos { offset: 0, line: 1, col: 1 };

type Res<T> = Result<T, SyntaxError>;

/// A character quoted for an error message: `'}'`, `'\n'`, `"'"`.
fn show(c: char) -> String {
    match c {
        '\'' => "\"'\"".to_string(),
        c if c.is_control() || c.is_whitespace() => format!("'{}'", c.escape_debug()),
        c => format!("'{c}'"),
    }
}

/// An integer literal within what RON's own reader takes (i64 and u64: ComfyUI's seeds run to 2^64 - 1).
fn int_literal(v: Option<i128>, start: Pos) -> Res<RonValue> {
    match v {
        Some(v) if (i128::from(i64::MIN)..=i128::from(u64::MAX)).contains(&v) => Ok(RonValue::Int(v)),
        _ => Err(error_at(start, "integer literal too large (integers run from -2^63 to 2^64 - 1)")),
    }
}

fn error_at(pos: Pos, message: impl Into<String>) -> SyntaxError {
    SyntaxError { pos, message: message.into() }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

struct Reader<'a> {
    src: &'a str,
    /// Position of the next unread character; always on a char boundary.
    at: Pos,
    depth: usize,
    max_depth: usize,
}

impl<'a> Reader<'a> {
    fn rest(&self) -> &'a str {
        self.src.get(self.at.offset..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek2(&self) -> Option<char> {
        self.rest().chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at.offset += c.len_utf8();
        if c == '\n' {
            self.at.line = self.at.line.saturating_add(1);
            self.at.col = 1;
        } else {
            self.at.col = self.at.col.saturating_add(1);
        }
        Some(c)
    }

    fn skip(&mut self, n: usize) {
        for _ in 0..n {
            self.bump();
        }
    }

    fn eat(&mut self, c: char) -> bool {
        let found = self.peek() == Some(c);
        if found {
            self.bump();
        }
        found
    }

    fn error(&self, message: impl Into<String>) -> SyntaxError {
        error_at(self.at, message)
    }

    /// "expected X, found Y" at the next character.
    fn expected(&self, what: &str) -> SyntaxError {
        match self.peek() {
            None => self.error(format!("unexpected end of input, expected {what}")),
            Some(c) => self.error(format!("expected {what}, found {}", show(c))),
        }
    }

    fn expect(&mut self, c: char, what: &str) -> Res<()> {
        if self.eat(c) { Ok(()) } else { Err(self.expected(what)) }
    }

    /// Skips whitespace and comments.
    fn skip_ws(&mut self) -> Res<()> {
        loop {
            let rest = self.rest();
            if rest.starts_with("//") {
                while self.bump().is_some_and(|c| c != '\n') {}
            } else if rest.starts_with("/*") {
                self.block_comment()?;
            } else if self.peek().is_some_and(char::is_whitespace) {
                self.bump();
            } else {
                return Ok(());
            }
        }
    }

    /// Skips a block comment; RON block comments nest, so count the levels.
    fn block_comment(&mut self) -> Res<()> {
        let start = self.at;
        let mut open = 0usize;
        loop {
            let rest = self.rest();
            if rest.starts_with("/*") {
                self.skip(2);
                open += 1;
            } else if rest.starts_with("*/") {
                self.skip(2);
                open -= 1;
                if open == 0 {
                    return Ok(());
                }
            } else if self.bump().is_none() {
                return Err(error_at(start, "unterminated block comment"));
            }
        }
    }

    /// Skips `#![name(ext, ...)]` attributes; they only matter to serde.
    fn attributes(&mut self) -> Res<()> {
        while self.eat('#') {
            self.expect('!', "'!' after '#'")?;
            self.expect('[', "'[' to start an attribute")?;
            self.skip_ws()?;
            if self.ident().is_none() {
                return Err(self.expected("an attribute name"));
            }
            self.skip_ws()?;
            self.expect('(', "'(' after the attribute name")?;
            loop {
                self.skip_ws()?;
                if self.eat(')') {
                    break;
                }
                if self.ident().is_none() {
                    return Err(self.expected("an extension name or ')'"));
                }
                self.skip_ws()?;
                if self.eat(')') {
                    break;
                }
                self.expect(',', "',' or ')' in the attribute")?;
            }
            self.skip_ws()?;
            self.expect(']', "']' to close the attribute")?;
            self.skip_ws()?;
        }
        Ok(())
    }

    /// Reads an identifier or a raw identifier `r#name`. Returns the name and
    /// whether it was raw (raw names are never keywords).
    fn ident(&mut self) -> Option<(&'a str, bool)> {
        let rest = self.rest();
        let raw = rest.starts_with("r#") && rest[2..].starts_with(is_ident_start);
        if raw {
            self.skip(2);
        } else if !rest.starts_with(is_ident_start) {
            return None;
        }
        let begin = self.at.offset;
        while self.peek().is_some_and(is_ident_char) {
            self.bump();
        }
        Some((self.src.get(begin..self.at.offset).unwrap_or(""), raw))
    }

    /// Runs `f` one nesting level deeper, refusing to pass the limit so that
    /// hostile input cannot overflow the stack.
    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Res<T>) -> Res<T> {
        if self.depth >= self.max_depth {
            return Err(self.error(format!("nesting deeper than {} levels", self.max_depth)));
        }
        self.depth += 1;
        let out = f(self);
        self.depth -= 1;
        out
    }

    fn value(&mut self) -> Res<SValue> {
        let start = self.at;
        let Some(c) = self.peek() else {
            return Err(self.expected("a value"));
        };
        let value = match c {
            '[' => self.nested(Self::list)?,
            '{' => self.nested(Self::map)?,
            '(' => self.nested(|r| r.parens(None))?,
            '"' => RonValue::Str(self.string()?),
            '\'' => RonValue::Char(self.char_lit()?),
            '0'..='9' | '+' | '-' => self.number()?,
            '.' if self.peek2().is_some_and(|c| c.is_ascii_digit()) => self.number()?,
            'b' if self.peek2() == Some('"') => return Err(self.error("byte strings are not supported")),
            'b' if self.peek2() == Some('\'') => return Err(self.error("byte literals are not supported")),
            'r' if self.rest()[1..].trim_start_matches('#').starts_with('"') => RonValue::Str(self.raw_string()?),
            c if is_ident_start(c) => self.ident_value()?,
            _ => return Err(self.expected("a value")),
        };
        Ok(Spanned::new(value, start))
    }

    /// Reads comma-separated items up to `close` (a trailing comma is fine);
    /// the opening bracket has been consumed.
    fn items(&mut self, close: char, what: &str, mut item: impl FnMut(&mut Self) -> Res<()>) -> Res<()> {
        loop {
            self.skip_ws()?;
            if self.eat(close) {
                return Ok(());
            }
            item(self)?;
            self.skip_ws()?;
            if self.eat(close) {
                return Ok(());
            }
            if !self.eat(',') {
                return Err(self.expected(&format!("',' or '{close}' after {what}")));
            }
        }
    }

    fn list(&mut self) -> Res<RonValue> {
        self.bump();
        let mut items = Vec::new();
        self.items(']', "a list item", |r| {
            items.push(r.value()?);
            Ok(())
        })?;
        Ok(RonValue::List(items))
    }

    fn map(&mut self) -> Res<RonValue> {
        self.bump();
        let mut entries = Vec::new();
        self.items('}', "a map entry", |r| {
            let key = r.value()?;
            r.skip_ws()?;
            r.expect(':', "':' after map key")?;
            r.skip_ws()?;
            entries.push((key, r.value()?));
            Ok(())
        })?;
        Ok(RonValue::Map(entries))
    }

    /// Reads `(...)` (after an optional name): unit, a struct or a tuple.
    fn parens(&mut self, name: Option<String>) -> Res<RonValue> {
        self.bump();
        self.skip_ws()?;
        if self.eat(')') {
            return Ok(match name {
                None => RonValue::Unit,
                Some(name) => RonValue::Tuple { name: Some(name), items: Vec::new() },
            });
        }
        if !self.field_ahead() {
            let mut items = Vec::new();
            self.items(')', "a tuple item", |r| {
                items.push(r.value()?);
                Ok(())
            })?;
            return Ok(RonValue::Tuple { name, items });
        }
        let mut fields = Vec::new();
        self.items(')', "a struct field", |r| {
            let pos = r.at;
            let Some((field, _)) = r.ident() else {
                return Err(r.expected("a field name"));
            };
            r.skip_ws()?;
            r.expect(':', "':' after the field name")?;
            r.skip_ws()?;
            fields.push((Spanned::new(field.to_string(), pos), r.value()?));
            Ok(())
        })?;
        Ok(RonValue::Struct { name, fields })
    }

    /// Whether an identifier and ':' come next, which makes `(...)` a struct.
    fn field_ahead(&mut self) -> bool {
        let saved = self.at;
        let found = self.ident().is_some() && self.skip_ws().is_ok() && self.peek() == Some(':');
        self.at = saved;
        found
    }

    /// Keywords, bare identifiers and named structs or tuples.
    fn ident_value(&mut self) -> Res<RonValue> {
        let Some((name, raw)) = self.ident() else {
            return Err(self.expected("a value"));
        };
        if !raw {
            match name {
                "true" => return Ok(RonValue::Bool(true)),
                "false" => return Ok(RonValue::Bool(false)),
                "inf" => return Ok(RonValue::Float(f64::INFINITY)),
                "NaN" => return Ok(RonValue::Float(f64::NAN)),
                "None" => return Ok(RonValue::Option(None)),
                "Some" => return self.some(),
                _ => {}
            }
        }
        // RON allows whitespace between a name and its parenthesis.
        self.skip_ws()?;
        if self.peek() == Some('(') {
            return self.nested(|r| r.parens(Some(name.to_string())));
        }
        Ok(RonValue::Ident(name.to_string()))
    }

    fn some(&mut self) -> Res<RonValue> {
        self.skip_ws()?;
        if self.peek() != Some('(') {
            return Err(self.expected("'(' after Some"));
        }
        self.nested(|r| {
            r.bump();
            r.skip_ws()?;
            let inner = r.value()?;
            r.skip_ws()?;
            if r.eat(',') {
                r.skip_ws()?;
            }
            r.expect(')', "')' to close Some(...)")?;
            Ok(RonValue::Option(Some(Box::new(inner))))
        })
    }

    fn number(&mut self) -> Res<RonValue> {
        let start = self.at;
        let negative = self.peek() == Some('-');
        if matches!(self.peek(), Some('+' | '-')) {
            self.bump();
        }
        let sign = if negative { "-" } else { "" };
        match self.peek() {
            Some('0'..='9') => {}
            Some('.') if self.peek2().is_some_and(|c| c.is_ascii_digit()) => {}
            _ => {
                let after_sign = self.at;
                return match self.ident() {
                    Some(("inf", false)) => {
                        Ok(RonValue::Float(if negative { f64::NEG_INFINITY } else { f64::INFINITY }))
                    }
                    Some(("NaN", false)) => Ok(RonValue::Float(f64::NAN)),
                    _ => {
                        self.at = after_sign;
                        Err(self.expected("a digit after the sign"))
                    }
                };
            }
        }
        let radix = match self.rest().get(..2) {
            Some("0x") => Some((16, "hexadecimal")),
            Some("0o") => Some((8, "octal")),
            Some("0b") => Some((2, "binary")),
            _ => None,
        };
        if let Some((radix, radix_name)) = radix {
            return self.prefixed_int(start, sign, radix, radix_name);
        }
        let int = self.decimal_digits();
        let mut float = false;
        let mut frac = String::new();
        let mut exp = String::new();
        if self.eat('.') {
            float = true;
            frac = self.decimal_digits();
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            float = true;
            self.bump();
            if self.eat('-') {
                exp.push('-');
            } else {
                self.eat('+');
            }
            let digits = self.decimal_digits();
            if digits.is_empty() {
                return Err(self.expected("digits in the exponent"));
            }
            exp.push_str(&digits);
        }
        if let Some(c) = self.peek().filter(|&c| is_ident_char(c)) {
            return Err(self.error(format!("invalid character {} in number", show(c))));
        }
        if float {
            // Rebuild a canonical literal so `str::parse` sees only digits.
            let or_zero = |s: &str| if s.is_empty() { "0".to_string() } else { s.to_string() };
            let text = format!("{sign}{}.{}e{}", or_zero(&int), or_zero(&frac), or_zero(&exp));
            return text.parse().map(RonValue::Float).map_err(|_| error_at(start, "invalid float literal"));
        }
        int_literal(format!("{sign}{int}").parse().ok(), start)
    }

    /// Reads the digits of `0x1F`, `0o17` or `0b101`, starting at the prefix.
    fn prefixed_int(&mut self, start: Pos, sign: &str, radix: u32, radix_name: &str) -> Res<RonValue> {
        self.skip(2);
        let mut digits = String::from(sign);
        while let Some(c) = self.peek() {
            if c.is_digit(radix) {
                digits.push(c);
            } else if is_ident_char(c) && c != '_' {
                return Err(self.error(format!("invalid digit {} in {radix_name} number", show(c))));
            } else if c != '_' {
                break;
            }
            self.bump();
        }
        if digits.len() == sign.len() {
            return Err(self.expected(&format!("{radix_name} digits after the prefix")));
        }
        int_literal(i128::from_str_radix(&digits, radix).ok(), start)
    }

    /// Reads `[0-9_]*` and returns the digits without the underscores.
    fn decimal_digits(&mut self) -> String {
        let mut digits = String::new();
        while let Some(c) = self.peek().filter(|&c| c.is_ascii_digit() || c == '_') {
            if c != '_' {
                digits.push(c);
            }
            self.bump();
        }
        digits
    }

    fn string(&mut self) -> Res<String> {
        let start = self.at;
        self.bump();
        let mut out = String::new();
        loop {
            let rest = self.rest();
            if rest.starts_with("\\\n") || rest.starts_with("\\\r\n") {
                // Line continuation: drop the newline and the next line's indent.
                self.bump();
                while self.peek().is_some_and(char::is_whitespace) {
                    self.bump();
                }
                continue;
            }
            match self.peek() {
                None => return Err(error_at(start, "unterminated string")),
                Some('"') => {
                    self.bump();
                    return Ok(out);
                }
                Some('\\') => out.push(self.escape(start, "string")?),
                Some(c) => {
                    self.bump();
                    out.push(c);
                }
            }
        }
    }

    fn char_lit(&mut self) -> Res<char> {
        let start = self.at;
        self.bump();
        let c = match self.peek() {
            None => return Err(error_at(start, "unterminated char literal")),
            Some('\'') => return Err(self.error("empty char literal")),
            Some('\\') => self.escape(start, "char literal")?,
            Some(c) => {
                self.bump();
                c
            }
        };
        self.expect('\'', "' to close the char literal")?;
        Ok(c)
    }

    /// Reads an escape sequence starting at the backslash; `start` is where
    /// the string or char began, for "unterminated" errors.
    fn escape(&mut self, start: Pos, kind: &str) -> Res<char> {
        let at = self.at;
        self.bump();
        let Some(c) = self.bump() else {
            return Err(error_at(start, format!("unterminated {kind}")));
        };
        Ok(match c {
            '"' | '\'' | '\\' | '/' => c,
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            '0' => '\0',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'x' => {
                let code = self.hex_digits(2)?;
                match char::from_u32(code).filter(char::is_ascii) {
                    Some(c) => c,
                    None => {
                        return Err(error_at(
                            at,
                            format!("invalid escape '\\x{code:02X}' in {kind}: only up to \\x7F"),
                        ));
                    }
                }
            }
            'u' => self.unicode_escape(at, kind)?,
            _ => return Err(error_at(at, format!("invalid escape '\\{}' in {kind}", c.escape_debug()))),
        })
    }

    /// `\u{1F600}` (1 to 6 digits) or `\uXXXX`, where a UTF-16 surrogate pair
    /// `\uD83D\uDE00` makes one char and a lone surrogate is an error.
    fn unicode_escape(&mut self, at: Pos, kind: &str) -> Res<char> {
        let code = if self.eat('{') {
            let mut code = 0u32;
            let mut count = 0;
            loop {
                match self.peek() {
                    Some('}') if count > 0 => break,
                    Some(c) if count < 6 && c.is_ascii_hexdigit() => {
                        code = code * 16 + c.to_digit(16).unwrap_or(0);
                        count += 1;
                    }
                    _ if count < 6 => return Err(self.expected("a hex digit or '}' in the unicode escape")),
                    _ => return Err(self.expected("'}' after at most 6 hex digits")),
                }
                self.bump();
            }
            self.bump();
            code
        } else {
            let high = self.hex_digits(4)?;
            let rest = self.rest();
            if (0xD800..0xDC00).contains(&high) && rest.starts_with("\\u") && !rest.starts_with("\\u{") {
                let saved = self.at;
                self.skip(2);
                let low = self.hex_digits(4)?;
                if (0xDC00..0xE000).contains(&low) {
                    return char::from_u32(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
                        .ok_or_else(|| error_at(at, "invalid surrogate pair"));
                }
                self.at = saved;
            }
            high
        };
        char::from_u32(code).ok_or_else(|| {
            let what = if (0xD800..0xE000).contains(&code) { "lone surrogate" } else { "invalid unicode escape" };
            error_at(at, format!("{what} '\\u{{{code:X}}}' in {kind}"))
        })
    }

    /// Reads exactly `n` hex digits (n <= 7, so no overflow).
    fn hex_digits(&mut self, n: usize) -> Res<u32> {
        let mut code = 0u32;
        for _ in 0..n {
            let Some(d) = self.peek().and_then(|c| c.to_digit(16)) else {
                return Err(self.expected("a hex digit in the escape"));
            };
            code = code * 16 + d;
            self.bump();
        }
        Ok(code)
    }

    /// `r"..."`, `r#"..."#`: no escapes; ends at a quote followed by as many
    /// `#` as opened it.
    fn raw_string(&mut self) -> Res<String> {
        let start = self.at;
        self.bump();
        let mut hashes = 0;
        while self.eat('#') {
            hashes += 1;
        }
        self.bump();
        let closing = "#".repeat(hashes);
        let mut out = String::new();
        loop {
            match self.bump() {
                None => return Err(error_at(start, "unterminated raw string")),
                // Comparing stops at the first non-'#', so this stays linear.
                Some('"') if self.rest().starts_with(&closing) => {
                    self.skip(hashes);
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RonValue as V;

    fn read_ok(src: &str) -> SValue {
        read(src, ReadLimits::default()).unwrap_or_else(|e| panic!("{src:?}: {} at {}", e.message, e.pos))
    }

    /// The error as "line:col message".
    fn read_err(src: &str) -> String {
        match read(src, ReadLimits::default()) {
            Ok(v) => panic!("{src:?} should fail, read {v:?}"),
            Err(e) => format!("{} {}", e.pos, e.message),
        }
    }

    /// Renders a value compactly so a test can compare a whole tree at once.
    fn render(v: &RonValue) -> String {
        let list = |xs: &[SValue]| xs.iter().map(|x| render(&x.value)).collect::<Vec<_>>().join(", ");
        match v {
            V::Bool(b) => b.to_string(),
            V::Int(i) => i.to_string(),
            V::Float(f) => format!("{f:?}"),
            V::Str(s) => format!("{s:?}"),
            V::Char(c) => format!("{c:?}"),
            V::Unit => "()".into(),
            V::Option(None) => "None".into(),
            V::Option(Some(x)) => format!("Some({})", render(&x.value)),
            V::List(xs) => format!("[{}]", list(xs)),
            V::Map(es) => {
                let es: Vec<_> =
                    es.iter().map(|(k, v)| format!("{}: {}", render(&k.value), render(&v.value))).collect();
                format!("{{{}}}", es.join(", "))
            }
            V::Struct { name, fields } => {
                let fs: Vec<_> = fields.iter().map(|(k, v)| format!("{}: {}", k.value, render(&v.value))).collect();
                format!("{}({})", name.as_deref().unwrap_or(""), fs.join(", "))
            }
            V::Tuple { name, items } => format!("{}({})", name.as_deref().unwrap_or(""), list(items)),
            V::Ident(s) => format!("Ident({s})"),
        }
    }

    fn check(cases: &[(&str, &str)]) {
        for (src, want) in cases {
            assert_eq!(render(&read_ok(src).value), *want, "reading {src:?}");
        }
    }

    #[test]
    fn scalars() {
        check(&[
            ("true", "true"),
            ("false", "false"),
            ("42", "42"),
            ("-7", "-7"),
            ("+7", "7"),
            ("1_000_000", "1000000"),
            ("0x1F", "31"),
            ("-0x10", "-16"),
            ("0b1010", "10"),
            ("0o7_7_7", "511"),
            ("9223372036854775807", "9223372036854775807"),
            ("-9223372036854775808", "-9223372036854775808"),
            ("-0x8000000000000000", "-9223372036854775808"),
            ("18446744073709551615", "18446744073709551615"),
            ("0xFFFF_FFFF_FFFF_FFFF", "18446744073709551615"),
            ("1.5", "1.5"),
            ("1e3", "1000.0"),
            ("-2.5E-3", "-0.0025"),
            ("0.5e+2", "50.0"),
            ("1_000.25", "1000.25"),
            ("1.", "1.0"),
            (".5", "0.5"),
            ("inf", "inf"),
            ("-inf", "-inf"),
            ("+inf", "inf"),
            ("NaN", "NaN"),
        ]);
    }

    #[test]
    fn strings_and_chars() {
        check(&[
            (r#""plain""#, r#""plain""#),
            (r#""\"\\\/\n\r\t\0\b\f""#, r#""\"\\/\n\r\t\0\u{8}\u{c}""#),
            (r#""\u{1F600} \u00e9 \uD83D\uDE00 \x41""#, r#""😀 é 😀 A""#),
            ("\"héllo wörld 😀\"", "\"héllo wörld 😀\""),
            ("\"two\nlines\"", "\"two\\nlines\""),
            ("\"con\\\n    tinued\"", "\"continued\""),
            ("\"crlf\\\r\n  too\"", "\"crlftoo\""),
            (r#"r"no \escapes""#, r#""no \\escapes""#),
            (r###"r##"a "# quote"##"###, r##""a \"# quote""##),
            ("'a'", "'a'"),
            (r"'\''", r"'\''"),
            (r"'\n'", r"'\n'"),
            ("'é'", "'é'"),
            (r"'\u{1F600}'", "'😀'"),
        ]);
    }

    #[test]
    fn compound_values() {
        check(&[
            ("()", "()"),
            ("( )", "()"),
            ("None", "None"),
            ("Some(1)", "Some(1)"),
            ("Some ( Some([1]) , )", "Some(Some([1]))"),
            ("[]", "[]"),
            ("[1, \"a\", 2.5,]", "[1, \"a\", 2.5]"),
            ("{}", "{}"),
            ("{\"a\": 1, 2: [true], (1, 2): X,}", "{\"a\": 1, 2: [true], (1, 2): Ident(X)}"),
            ("(a: 1, b: (c: 'x'),)", "(a: 1, b: (c: 'x'))"),
            ("Point(x: 1.5, y: -2)", "Point(x: 1.5, y: -2)"),
            ("Point /* c */ (x: 1)", "Point(x: 1)"),
            ("(1, \"two\")", "(1, \"two\")"),
            ("(1)", "(1)"),
            ("((a))", "((Ident(a)))"),
            ("Pair(1, 2,)", "Pair(1, 2)"),
            ("Empty()", "Empty()"),
            ("EulerA", "Ident(EulerA)"),
            ("_private", "Ident(_private)"),
            ("r#type", "Ident(type)"),
            ("r#true", "Ident(true)"),
            ("(r#type: 1, None: 2)", "(type: 1, None: 2)"),
            ("(None, Some(true))", "(None, Some(true))"),
            ("[A, B(1), C(x: [])]", "[Ident(A), B(1), C(x: [])]"),
        ]);
    }

    #[test]
    fn comments_and_attributes() {
        check(&[
            ("// lead\n1 // trail", "1"),
            ("/* a /* nested */ b */ [1, /**/ 2]", "[1, 2]"),
            ("#![enable(implicit_some)] 1", "1"),
            ("// c\n#![enable(implicit_some, unwrap_newtypes,)]\n#![enable()]\n(a: 1)", "(a: 1)"),
            ("[1 // one\n, 2 /* two */]", "[1, 2]"),
        ]);
    }

    #[test]
    fn positions() {
        // Identifiers are ASCII, so the multibyte chars sit in comments and strings.
        let src = "// héllo wörld\n(\n  /*é*/ s: \"ü\", b: [1,  -2.5],\n\tc: Some(x),\n)";
        let root = read_ok(src);
        assert_eq!(root.pos, Pos { offset: 17, line: 2, col: 1 });
        let V::Struct { fields, .. } = &root.value else { panic!("{root:?}") };
        let (s_name, s) = &fields[0];
        assert_eq!((s_name.value.as_str(), s_name.pos), ("s", Pos { offset: 28, line: 3, col: 9 }));
        assert_eq!(s.pos, Pos { offset: 31, line: 3, col: 12 });
        let (b, list) = &fields[1];
        assert_eq!(b.pos, Pos { offset: 37, line: 3, col: 17 });
        assert_eq!(list.pos, Pos { offset: 40, line: 3, col: 20 });
        let V::List(items) = &list.value else { panic!() };
        assert_eq!(items[0].pos, Pos { offset: 41, line: 3, col: 21 });
        assert_eq!(items[1].pos, Pos { offset: 45, line: 3, col: 25 });
        let (c, some) = &fields[2];
        let c_at = src.find("c:").unwrap();
        assert_eq!(c.pos, Pos { offset: c_at, line: 4, col: 2 });
        assert_eq!(some.pos, Pos { offset: c_at + 3, line: 4, col: 5 });
        let V::Option(Some(x)) = &some.value else { panic!() };
        assert_eq!(x.pos, Pos { offset: c_at + 8, line: 4, col: 10 });
        // Map keys and values each have their own position.
        let map = read_ok("{\n 'é': r\"x\" }");
        let V::Map(es) = &map.value else { panic!() };
        assert_eq!((es[0].0.pos.line, es[0].0.pos.col, es[0].1.pos.col), (2, 2, 7));
    }

    #[test]
    fn errors() {
        let cases = [
            ("", "1:1 unexpected end of input, expected a value"),
            ("  // only a comment\n", "2:1 unexpected end of input, expected a value"),
            ("{a: 1, b}", "1:9 expected ':' after map key, found '}'"),
            ("{1: 2", "1:6 unexpected end of input, expected ',' or '}' after a map entry"),
            ("[1 2]", "1:4 expected ',' or ']' after a list item, found '2'"),
            ("-\t1", "1:2 expected a digit after the sign, found '\\t'"),
            ("[1 'a']", "1:4 expected ',' or ']' after a list item, found \"'\""),
            ("[1,\n  @]", "2:3 expected a value, found '@'"),
            ("[1, 2,, 3]", "1:7 expected a value, found ','"),
            ("é", "1:1 expected a value, found 'é'"),
            ("1 2", "1:3 unexpected trailing characters after the value, found '2'"),
            ("(a: 1, 2)", "1:8 expected a field name, found '2'"),
            ("(a: 1 b: 2)", "1:7 expected ',' or ')' after a struct field, found 'b'"),
            ("(a 1)", "1:4 expected ',' or ')' after a tuple item, found '1'"),
            ("(a:)", "1:4 expected a value, found ')'"),
            ("Some 1", "1:6 expected '(' after Some, found '1'"),
            ("Some(1 2)", "1:8 expected ')' to close Some(...), found '2'"),
            ("\"abc", "1:1 unterminated string"),
            ("[\n  \"abc\\\"]", "2:3 unterminated string"),
            ("[1, \"a\\qb\"]", "1:7 invalid escape '\\q' in string"),
            ("'\\q'", "1:2 invalid escape '\\q' in char literal"),
            ("\"\\u12\"", "1:6 expected a hex digit in the escape, found '\"'"),
            ("\"\\uD800\"", "1:2 lone surrogate '\\u{D800}' in string"),
            ("\"\\uDE00\"", "1:2 lone surrogate '\\u{DE00}' in string"),
            ("\"\\uD83D\\u0041\"", "1:2 lone surrogate '\\u{D83D}' in string"),
            ("\"\\uD83D\\u{DE00}\"", "1:2 lone surrogate '\\u{D83D}' in string"),
            ("\"\\u{D800}\"", "1:2 lone surrogate '\\u{D800}' in string"),
            ("\"\\u{110000}\"", "1:2 invalid unicode escape '\\u{110000}' in string"),
            ("\"\\u{}\"", "1:5 expected a hex digit or '}' in the unicode escape, found '}'"),
            ("\"\\u{1234567}\"", "1:11 expected '}' after at most 6 hex digits, found '7'"),
            ("\"\\x80\"", "1:2 invalid escape '\\x80' in string: only up to \\x7F"),
            ("''", "1:2 empty char literal"),
            ("'ab'", "1:3 expected ' to close the char literal, found 'b'"),
            ("'", "1:1 unterminated char literal"),
            ("r#\"abc\"", "1:1 unterminated raw string"),
            ("b\"abc\"", "1:1 byte strings are not supported"),
            ("b'a'", "1:1 byte literals are not supported"),
            ("18446744073709551616", "1:1 integer literal too large (integers run from -2^63 to 2^64 - 1)"),
            ("[-9223372036854775809]", "1:2 integer literal too large (integers run from -2^63 to 2^64 - 1)"),
            ("0x1_0000_0000_0000_0000", "1:1 integer literal too large (integers run from -2^63 to 2^64 - 1)"),
            ("0x", "1:3 unexpected end of input, expected hexadecimal digits after the prefix"),
            ("0b102", "1:5 invalid digit '2' in binary number"),
            ("1e", "1:3 unexpected end of input, expected digits in the exponent"),
            ("1u8", "1:2 invalid character 'u' in number"),
            ("-x", "1:2 expected a digit after the sign, found 'x'"),
            ("-", "1:2 unexpected end of input, expected a digit after the sign"),
            ("/* a /* b */", "1:1 unterminated block comment"),
            ("#[enable(a)] 1", "1:2 expected '!' after '#', found '['"),
            ("#![enable(a b)] 1", "1:13 expected ',' or ')' in the attribute, found 'b'"),
        ];
        for (src, want) in cases {
            assert_eq!(read_err(src), want, "reading {src:?}");
        }
    }

    #[test]
    fn size_limit() {
        let limits = ReadLimits { max_bytes: 2, ..ReadLimits::default() };
        let err = read("[1]", limits).unwrap_err();
        assert_eq!(err.pos, Pos { offset: 0, line: 1, col: 1 });
        assert_eq!(err.message, "file is 3 bytes, larger than the limit of 2 bytes");
        assert!(read("[]", limits).is_ok());
    }

    #[test]
    fn depth_limit() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(read(&nested(64), ReadLimits::default()).is_ok());
        let err = read(&nested(65), ReadLimits::default()).unwrap_err();
        assert_eq!(format!("{} {}", err.pos, err.message), "1:65 nesting deeper than 64 levels");
        // Far deeper input must fail cleanly rather than overflow the stack.
        for open in ["[", "{", "(", "Some(", "A(", "(a: ", "{[", "[(1, "] {
            let src = open.repeat(100_000);
            let err = read(&src, ReadLimits::default()).unwrap_err();
            assert_eq!(err.message, "nesting deeper than 64 levels", "for {open:?}");
        }
    }

    /// Computes a position from a byte offset the slow, obvious way.
    fn pos_at(src: &str, offset: usize) -> Pos {
        let before = &src[..offset];
        let line = before.matches('\n').count() as u32 + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Pos { offset, line, col: before[line_start..].chars().count() as u32 + 1 }
    }

    /// Every position in the tree is a char boundary with a matching line and column.
    fn check_positions(src: &str, v: &SValue) {
        assert!(src.is_char_boundary(v.pos.offset) && v.pos.offset < src.len(), "{src:?} {v:?}");
        assert_eq!(v.pos, pos_at(src, v.pos.offset), "{src:?}");
        match &v.value {
            V::Option(Some(x)) => check_positions(src, x),
            V::List(xs) | V::Tuple { items: xs, .. } => xs.iter().for_each(|x| check_positions(src, x)),
            V::Map(es) => es.iter().for_each(|(k, x)| {
                check_positions(src, k);
                check_positions(src, x);
            }),
            V::Struct { fields, .. } => fields.iter().for_each(|(k, x)| {
                assert_eq!(k.pos, pos_at(src, k.pos.offset));
                check_positions(src, x);
            }),
            _ => {}
        }
    }

    const SAMPLE: &str = r####"#![enable(implicit_some)]
// A graph in the shape sdgraph uses, plus one of everything.
(
    name: "txt2img ✨",
    nodes: {
        "load": (type: "LoadCheckpoint", params: (path: r#"models/"sd15".safetensors"#)),
        "sample": KSampler(steps: 20, cfg: 7.5, seed: 0xC0FF_EE, sampler: EulerA, eta: -1e-3),
    },
    links: [("load.model", "sample.model"), Link("a", 'b', '\u{e9}'),],
    /* nested /* block */ comment */
    extra: (Some(None), [inf, -inf, NaN, 0b1010, 0o17, -42], {1: (), (): "\t\"\\\u{e9}"}),
    r#type: Unit,
)
"####;

    #[test]
    fn sample_reads_with_positions() {
        let v = read_ok(SAMPLE);
        check_positions(SAMPLE, &v);
    }

    /// Random mutations of valid documents must never panic, and any error
    /// or value must carry a valid position.
    #[test]
    fn fuzz_never_panics() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut rng = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n.max(1) as u64) as usize
        };
        let palette: Vec<char> = "[](){}:,\"'\\/*#rbSomeNx0123456789-+._eE u{}\n\té😀\u{0}".chars().collect();
        let seeds = [
            SAMPLE,
            "[1, 2.5, \"s\\u{41}\\u00e9\\uD83D\\uDE00\", 'c', r#\"raw\"#, (a: Some(X(1)))]",
            "{\"k\": /* c */ [0x1F, -3]}",
        ];
        for round in 0..30_000 {
            let mut text: Vec<char> = seeds[round % seeds.len()].chars().collect();
            for _ in 0..1 + rng(4) {
                let at = rng(text.len() + 1);
                match rng(5) {
                    0 if at < text.len() => text[at] = palette[rng(palette.len())],
                    1 => text.insert(at, palette[rng(palette.len())]),
                    2 => {
                        let end = (at + rng(8)).min(text.len());
                        text.drain(at..end);
                    }
                    3 => {
                        let end = (at + rng(16)).min(text.len());
                        let copy: Vec<char> = text[at..end].to_vec();
                        let to = rng(text.len() + 1);
                        text.splice(to..to, copy);
                    }
                    _ => text.truncate(at),
                }
            }
            let src: String = text.into_iter().collect();
            let limits = ReadLimits { max_bytes: 1 << 20, max_depth: 1 + rng(8) };
            match read(&src, limits) {
                Ok(v) => check_positions(&src, &v),
                Err(e) => {
                    assert!(src.is_char_boundary(e.pos.offset), "{src:?}: {e:?}");
                    assert_eq!(e.pos, pos_at(&src, e.pos.offset), "{src:?}: {e:?}");
                    assert!(!e.message.is_empty());
                }
            }
        }
        // Byte-level damage, which can split multibyte chars.
        for round in 0..5_000 {
            let mut bytes = SAMPLE.as_bytes().to_vec();
            for _ in 0..1 + rng(3) {
                let at = rng(bytes.len());
                bytes[at] = (rng(256) as u8).wrapping_add(round as u8);
            }
            let src = String::from_utf8_lossy(&bytes);
            let _ = read(&src, ReadLimits::default());
        }
    }

    /// Our tree in the shape of `ron::Value`, which turns structs into maps
    /// keyed by field name, tuples into sequences and names into nothing.
    fn to_ron(v: &RonValue) -> ron::Value {
        use ron::{Number, Value as R};
        match v {
            V::Bool(b) => R::Bool(*b),
            V::Int(i) => R::Number(i64::try_from(*i).map_or_else(|_| Number::U64(*i as u64), Number::I64)),
            V::Float(f) => R::Number(Number::from(*f)),
            V::Str(s) => R::String(s.clone()),
            V::Char(c) => R::Char(*c),
            V::Unit | V::Ident(_) => R::Unit,
            V::Option(o) => R::Option(o.as_ref().map(|x| Box::new(to_ron(&x.value)))),
            V::List(xs) | V::Tuple { items: xs, .. } => R::Seq(xs.iter().map(|x| to_ron(&x.value)).collect()),
            V::Map(es) => R::Map(es.iter().map(|(k, x)| (to_ron(&k.value), to_ron(&x.value))).collect()),
            V::Struct { fields, .. } => {
                R::Map(fields.iter().map(|(k, x)| (R::String(k.value.clone()), to_ron(&x.value))).collect())
            }
        }
    }

    /// `ron` picks the smallest number type; widen to i64 / f64 to compare.
    fn widen(v: ron::Value) -> ron::Value {
        use ron::{Number as N, Value as R};
        match v {
            R::Number(n) => R::Number(match n {
                N::I8(x) => N::I64(x.into()),
                N::I16(x) => N::I64(x.into()),
                N::I32(x) => N::I64(x.into()),
                N::U8(x) => N::I64(x.into()),
                N::U16(x) => N::I64(x.into()),
                N::U32(x) => N::I64(x.into()),
                N::U64(x) => i64::try_from(x).map_or(N::U64(x), N::I64),
                N::F32(x) => N::from(f64::from(x.get())),
                other => other,
            }),
            R::Option(o) => R::Option(o.map(|x| Box::new(widen(*x)))),
            R::Seq(xs) => R::Seq(xs.into_iter().map(widen).collect()),
            R::Map(m) => R::Map(m.into_iter().map(|(k, x)| (widen(k), widen(x))).collect()),
            other => other,
        }
    }

    #[test]
    fn agrees_with_ron_crate() {
        let docs = [
            "true",
            "-42",
            "+5",
            "0x1F",
            "-0x10",
            "0b101",
            "0o17",
            "1_000",
            "9223372036854775807",
            "-9223372036854775808",
            "1.5",
            "-2.5E-3",
            "1e3",
            "1.",
            "[1.0, 2.25, -0.5, 1e-7, 123456.789, 0.1]",
            "inf",
            "-inf",
            "NaN",
            r#""héllo\n\t\"q\" \u{1F600} \x41 \\ \0""#,
            "\"two\nlines\"",
            "\"con\\\ntinued\"",
            r###"r##"raw "# str"##"###,
            "'x'",
            r"'\''",
            r"'\u{e9}'",
            "()",
            "None",
            "Some(3)",
            "Some ( Some([1]) , )",
            "[1, 2, 3,]",
            "[]",
            "{\"a\": 1, \"b\": [true, false],}",
            "{1: \"one\", 2: \"two\"}",
            "{(1, 2): [], Name(a: 1): None}",
            "(a: 1, b: \"x\")",
            "Point(x: 1.5, y: -2)",
            "(1, \"two\", 3.0)",
            "Pair(1, 2)",
            "Wrapper(5)",
            "Empty()",
            "Variant",
            "r#type",
            "(r#type: 1)",
            "[A, B(1), C(x: 2)]",
            "#![enable(implicit_some)]\n(a: 1)",
            "/* a /* b */ c */ // d\n[1, /* e */ 2]",
            SAMPLE,
        ];
        for doc in docs {
            let theirs = ron::from_str::<ron::Value>(doc).unwrap_or_else(|e| panic!("ron rejects {doc:?}: {e}"));
            let ours = read_ok(doc);
            assert_eq!(to_ron(&ours.value), widen(theirs), "reading {doc:?}");
        }
    }
}
