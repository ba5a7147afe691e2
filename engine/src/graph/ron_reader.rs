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
//! do not change how values are read), bools, integers that fit i64
//! (decimal, `0x`, `0o`, `0b`, `_` separators), floats (`1.5`, `1.`, `.5`,
//! `1e3`, `inf`, `NaN`), strings with escapes, raw strings, chars, `()`,
//! `None`/`Some(v)`, lists, maps, structs and tuples (named or not) and bare
//! identifiers. Not supported: byte strings, number suffixes (`1u8`).

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
        let message =
            format!("file is {} bytes, larger than the limit of {} bytes", src.len(), limits.max_bytes);
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

/// A character quoted for an error message: `'}'`, `'\n'`.
fn show(c: char) -> String {
    format!("'{}'", c.escape_debug())
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
            'r' if self.rest()[1..].trim_start_matches('#').starts_with('"') => {
                RonValue::Str(self.raw_string()?)
            }
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
                    Some(("inf", false)) => Ok(RonValue::Float(if negative { f64::NEG_INFINITY } else { f64::INFINITY })),
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
            return i64::from_str_radix(&digits, radix)
                .map(RonValue::Int)
                .map_err(|_| error_at(start, "integer literal too large"));
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
        format!("{sign}{int}").parse().map(RonValue::Int).map_err(|_| error_at(start, "integer literal too large"))
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
                        return Err(error_at(at, format!("invalid escape '\\x{code:02X}' in {kind}: only up to \\x7F")));
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
            if (0xD800..0xDC00).contains(&high) && self.rest().starts_with("\\u") {
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

    /// Reads exactly `n` (at most 7) hex digits.
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
