//! The rows of a sweep, read from its params file: CSV (a header of `node.param` columns), JSONL (one object of
//! `node.param` -> value per line), or RON / JSON (a list of such objects, a list of lists of `--set` strings, or
//! `{"product": {"node.param": [values], ...}}`, every combination, the first column varying slowest).
//!
//! Every error names the file, the row (numbered from 0, as the row folders are), its line where there is one, and
//! the column, so a typo in row 7,312 of a generated file is found without bisecting it.

use std::path::Path;

use graph::ron_reader::{self, ReadLimits};
use graph::spanned::{RonValue, SValue};
use graph::{ParamValue, SetOverride};

/// The most rows one sweep may have (a product of long lists grows fast).
const MAX_ROWS: usize = 10_000_000;

/// One row: the `node.param` overrides it applies, in column order.
#[derive(Debug, Clone)]
pub struct Row {
    /// The 1-based line the row starts on, where the format has lines.
    pub line: Option<usize>,
    /// (column `node.param`, value); a CSV row's empty cells are left out (the graph's value stands).
    pub sets: Vec<(String, ParamValue)>,
}

impl Row {
    /// The overrides to apply to the graph.
    pub fn overrides(&self) -> Vec<SetOverride> {
        self.sets
            .iter()
            .map(|(col, value)| {
                // Columns were checked to hold a '.' when read.
                let (node, param) = col.rsplit_once('.').unwrap_or((col, ""));
                SetOverride { node: node.into(), param: param.into(), value: value.clone() }
            })
            .collect()
    }

    /// The params as a JSON object, for the manifest.
    pub fn json(&self) -> serde_json::Value {
        let map = self.sets.iter().map(|(c, v)| (c.clone(), value_json(v))).collect();
        serde_json::Value::Object(map)
    }
}

/// A param value as JSON (integers as i64 or u64, as a graph holds them).
pub fn value_json(v: &ParamValue) -> serde_json::Value {
    match v {
        ParamValue::Int(i) => match (i64::try_from(*i), u64::try_from(*i)) {
            (Ok(i), _) => i.into(),
            (_, Ok(u)) => u.into(),
            _ => i.to_string().into(),
        },
        ParamValue::Float(f) => (*f).into(),
        ParamValue::Bool(b) => (*b).into(),
        ParamValue::String(s) => s.clone().into(),
    }
}

/// `file: row 3 (line 5), column "sample.seed"`: where an error is.
pub fn place(file: &str, row: usize, line: Option<usize>, column: Option<&str>) -> String {
    let mut s = format!("{file}: row {row}");
    if let Some(l) = line {
        s.push_str(&format!(" (line {l})"));
    }
    if let Some(c) = column {
        s.push_str(&format!(", column {c:?}"));
    }
    s
}

/// Reads the params file; the format comes from its extension (`.csv`, `.jsonl`/`.ndjson`, `.json`, `.ron`).
pub fn read(path: &Path) -> Result<Vec<Row>, String> {
    let file = path.display().to_string();
    let bytes = super::super::load::read_limited(path).map_err(|e| format!("{file}: {e}"))?;
    let text = String::from_utf8(bytes).map_err(|e| format!("{file}: not UTF-8 text: {e}"))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let rows = match ext.as_str() {
        "csv" => csv_rows(&file, &text)?,
        "jsonl" | "ndjson" => jsonl_rows(&file, &text)?,
        "json" | "ron" => ron_rows(&file, &text)?,
        _ => return Err(format!("{file}: unknown params format {ext:?}: expected .csv, .jsonl, .json or .ron")),
    };
    if rows.is_empty() {
        return Err(format!("{file}: no rows"));
    }
    Ok(rows)
}

/// Checks a column is `node.param`.
fn column(file: &str, at: &str, name: &str) -> Result<String, String> {
    let name = name.trim();
    match name.rsplit_once('.') {
        Some((n, p)) if !n.is_empty() && !p.is_empty() => Ok(name.to_string()),
        _ => Err(format!("{file}: {at}: column {name:?} is not node.param")),
    }
}

/// A CSV cell as `--set` reads a value: a RON literal (`7`, `7.5`, `true`, `"a"`), else the text as a string.
fn cell_value(col: &str, cell: &str) -> Result<ParamValue, String> {
    SetOverride::parse(&format!("{col}={cell}")).map(|s| s.value)
}

// ---------------------------------------------------------------- CSV

fn csv_rows(file: &str, text: &str) -> Result<Vec<Row>, String> {
    let mut records = csv_records(file, text)?.into_iter();
    let Some((_, header)) = records.next() else { return Err(format!("{file}: empty (expected a header line)")) };
    let mut cols: Vec<String> = Vec::new();
    for (i, h) in header.iter().enumerate() {
        let c = column(file, &format!("line 1, column {}", i + 1), h)?;
        if cols.contains(&c) {
            return Err(format!("{file}: line 1: column {c:?} appears twice"));
        }
        cols.push(c);
    }
    let mut rows = Vec::new();
    for (row, (line, fields)) in records.enumerate() {
        if fields.len() != cols.len() {
            return Err(format!(
                "{}: {} field(s), but the header has {} column(s)",
                place(file, row, Some(line), None),
                fields.len(),
                cols.len()
            ));
        }
        let mut sets = Vec::new();
        for (col, cell) in cols.iter().zip(&fields) {
            if cell.is_empty() {
                continue;
            }
            let v = cell_value(col, cell).map_err(|e| format!("{}: {e}", place(file, row, Some(line), Some(col))))?;
            sets.push((col.clone(), v));
        }
        rows.push(Row { line: Some(line), sets });
    }
    Ok(rows)
}

/// RFC 4180 records with their starting lines: fields separated by commas, `"quoted, fields"` with `""` for a quote
/// and line breaks inside, records ended by LF or CRLF; blank lines are skipped.
fn csv_records(file: &str, text: &str) -> Result<Vec<(usize, Vec<String>)>, String> {
    let mut records = Vec::new();
    let mut fields: Vec<String> = Vec::new();
    let mut field = String::new();
    let (mut line, mut start_line) = (1usize, 1usize);
    // Whether the current field was quoted, and whether we are inside its quotes.
    let (mut quoted, mut in_quotes) = (false, false);
    let mut chars = text.strip_prefix('\u{feff}').unwrap_or(text).chars().peekable();
    let end_field = |fields: &mut Vec<String>, field: &mut String, quoted: &mut bool| {
        fields.push(std::mem::take(field));
        *quoted = false;
    };
    while let Some(c) = chars.next() {
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push(c);
                }
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !quoted => (quoted, in_quotes) = (true, true),
            '"' => {
                return Err(format!(
                    "{file}: line {line}: a '\"' inside an unquoted field (quote the whole field and double the quote)"
                ));
            }
            ',' => end_field(&mut fields, &mut field, &mut quoted),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                let blank = fields.is_empty() && field.is_empty() && !quoted;
                if !blank {
                    end_field(&mut fields, &mut field, &mut quoted);
                    records.push((start_line, std::mem::take(&mut fields)));
                }
                line += 1;
                start_line = line;
            }
            _ if quoted => {
                return Err(format!("{file}: line {line}: text after a quoted field's closing quote"));
            }
            _ => field.push(c),
        }
    }
    if in_quotes {
        return Err(format!("{file}: line {start_line}: a quoted field is not closed"));
    }
    if !(fields.is_empty() && field.is_empty() && !quoted) {
        end_field(&mut fields, &mut field, &mut quoted);
        records.push((start_line, fields));
    }
    Ok(records)
}

// ---------------------------------------------------------------- JSONL

fn jsonl_rows(file: &str, text: &str) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let (line, row) = (i + 1, rows.len());
        if l.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(l).map_err(|e| format!("{}: not JSON: {e}", place(file, row, Some(line), None)))?;
        let serde_json::Value::Object(map) = v else {
            return Err(format!(
                "{}: expected an object of \"node.param\": value, found {}",
                place(file, row, Some(line), None),
                json_kind(&v)
            ));
        };
        let mut sets = Vec::new();
        for (k, v) in map {
            let col = column(file, &place(file, row, Some(line), None), &k)
                .map_err(|e| e.replacen(&format!("{file}: "), "", 1))?;
            let at = || place(file, row, Some(line), Some(&col));
            let value = match &v {
                serde_json::Value::Bool(b) => ParamValue::Bool(*b),
                serde_json::Value::String(s) => ParamValue::String(s.clone()),
                serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                    (Some(i), _, _) => ParamValue::Int(i.into()),
                    (_, Some(u), _) => ParamValue::Int(u.into()),
                    (_, _, Some(f)) => ParamValue::Float(f),
                    _ => return Err(format!("{}: {n} is not a number sdgraph can hold", at())),
                },
                other => {
                    return Err(format!("{}: expected a number, string or bool, found {}", at(), json_kind(other)));
                }
            };
            sets.push((col, value));
        }
        rows.push(Row { line: Some(line), sets });
    }
    Ok(rows)
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a bool",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

// ---------------------------------------------------------------- RON / JSON

fn ron_rows(file: &str, text: &str) -> Result<Vec<Row>, String> {
    // JSON's objects, lists, numbers, strings and bools are RON too (the reader takes `\uXXXX`), and RON's reader
    // keeps the order of keys and their lines, which a product's row numbering depends on.
    let v = ron_reader::read(text, ReadLimits { max_bytes: 256 << 20, max_depth: 8 })
        .map_err(|e| format!("{file}:{}:{}: {}", e.pos.line, e.pos.col, e.message))?;
    match &v.value {
        RonValue::List(items) => items.iter().enumerate().map(|(row, item)| ron_row(file, row, item)).collect(),
        RonValue::Map(entries) => match entries.as_slice() {
            [(k, body)] if matches!(&k.value, RonValue::Str(s) | RonValue::Ident(s) if s == "product") => {
                product(file, body)
            }
            _ => Err(format!("{file}: expected a list of rows or {{\"product\": {{\"node.param\": [values], ...}}}}")),
        },
        RonValue::Struct { fields, .. } if fields.len() == 1 && fields[0].0.value == "product" => {
            product(file, &fields[0].1)
        }
        other => {
            Err(format!("{file}: expected a list of rows or {{\"product\": {{...}}}}, found {}", other.describe()))
        }
    }
}

/// A map's string keys with their values (a RON struct's fields count as keys).
fn entries(v: &SValue) -> Option<Vec<(String, &SValue)>> {
    match &v.value {
        RonValue::Map(es) => es
            .iter()
            .map(|(k, v)| match &k.value {
                RonValue::Str(s) => Some((s.clone(), v)),
                _ => None,
            })
            .collect(),
        RonValue::Struct { fields, .. } => Some(fields.iter().map(|(k, v)| (k.value.clone(), v)).collect()),
        _ => None,
    }
}

fn ron_row(file: &str, row: usize, item: &SValue) -> Result<Row, String> {
    let line = Some(item.pos.line as usize);
    let at = place(file, row, line, None);
    if let RonValue::List(sets) = &item.value {
        // `["sample.seed=1", "pos.text=a cat"]`: `--set` arguments.
        let mut out = Vec::new();
        for s in sets {
            let RonValue::Str(arg) = &s.value else {
                return Err(format!("{at}: expected \"node.param=value\" strings, found {}", s.value.describe()));
            };
            let set = SetOverride::parse(arg).map_err(|e| format!("{at}: {e}"))?;
            out.push((format!("{}.{}", set.node, set.param), set.value));
        }
        return Ok(Row { line, sets: out });
    }
    let Some(es) = entries(item) else {
        return Err(format!("{at}: expected a map of \"node.param\": value, found {}", item.value.describe()));
    };
    let mut sets = Vec::new();
    for (k, v) in es {
        let col = column(file, &at, &k).map_err(|e| e.replacen(&format!("{file}: "), "", 1))?;
        let value =
            scalar(v).map_err(|e| format!("{}: {e}", place(file, row, Some(v.pos.line as usize), Some(&col))))?;
        sets.push((col, value));
    }
    Ok(Row { line, sets })
}

fn scalar(v: &SValue) -> Result<ParamValue, String> {
    graph::schema::param_value(&v.value)
        .ok_or_else(|| format!("expected a number, string or bool, found {}", v.value.describe()))
}

/// Every combination of the lists, in order: the first column varies slowest, as nested loops in the file's order.
fn product(file: &str, body: &SValue) -> Result<Vec<Row>, String> {
    let Some(es) = entries(body) else {
        return Err(format!(
            "{file}: \"product\" must be a map of \"node.param\": [values], found {}",
            body.value.describe()
        ));
    };
    let mut cols: Vec<(String, Vec<ParamValue>)> = Vec::new();
    let mut total: usize = 1;
    for (k, v) in es {
        let at = format!("line {}", v.pos.line);
        let col = column(file, &at, &k)?;
        if cols.iter().any(|(c, _)| *c == col) {
            return Err(format!("{file}: {at}: column {col:?} appears twice"));
        }
        let RonValue::List(items) = &v.value else {
            return Err(format!(
                "{file}: {at}: column {col:?}: expected a list of values, found {}",
                v.value.describe()
            ));
        };
        if items.is_empty() {
            return Err(format!("{file}: {at}: column {col:?}: the list is empty (the product would have no rows)"));
        }
        let values = items
            .iter()
            .map(|i| scalar(i).map_err(|e| format!("{file}: line {}: column {col:?}: {e}", i.pos.line)))
            .collect::<Result<Vec<_>, _>>()?;
        total = total.saturating_mul(values.len());
        cols.push((col, values));
    }
    if total > MAX_ROWS {
        return Err(format!("{file}: the product has {total} rows, over the limit of {MAX_ROWS}"));
    }
    let rows = (0..total)
        .map(|mut r| {
            let mut sets = vec![(String::new(), ParamValue::Bool(false)); cols.len()];
            for (i, (col, values)) in cols.iter().enumerate().rev() {
                sets[i] = (col.clone(), values[r % values.len()].clone());
                r /= values.len();
            }
            Row { line: None, sets }
        })
        .collect();
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> Result<Vec<Row>, String> {
        csv_rows("p.csv", text)
    }

    #[test]
    fn csv_reads_quotes_commas_line_breaks_and_empty_cells() {
        let rows = csv("sample.seed,pos.text\r\n1,\"a cat, \"\"tall\"\"\"\n\n2,\n3,\"two\nlines\"\n").unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].sets[0], ("sample.seed".into(), ParamValue::Int(1)));
        assert_eq!(rows[0].sets[1].1, ParamValue::String("a cat, \"tall\"".into()));
        assert_eq!(rows[1].sets.len(), 1, "an empty cell keeps the graph's value");
        assert_eq!((rows[1].line, rows[2].line), (Some(4), Some(5)));
        assert_eq!(rows[2].sets[1].1, ParamValue::String("two\nlines".into()));
    }

    #[test]
    fn malformed_csv_names_the_row_and_line() {
        let e = csv("sample.seed,pos.text\n1,a\n2\n").unwrap_err();
        assert!(e.contains("row 1 (line 3)") && e.contains("1 field(s)"), "{e}");
        let e = csv("sample.seed\n\"1\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("not closed"), "{e}");
        let e = csv("seed\n1\n").unwrap_err();
        assert!(e.contains("\"seed\" is not node.param"), "{e}");
    }

    #[test]
    fn product_varies_the_last_column_fastest() {
        let rows = ron_rows("p.json", r#"{"product": {"sample.seed": [1, 2, 3], "pos.text": ["a", "b"]}}"#).unwrap();
        assert_eq!(rows.len(), 6);
        let pairs: Vec<String> = rows.iter().map(|r| format!("{:?}", (&r.sets[0].1, &r.sets[1].1))).collect();
        assert_eq!(pairs[0], format!("{:?}", (ParamValue::Int(1), ParamValue::String("a".into()))));
        assert_eq!(pairs[1], format!("{:?}", (ParamValue::Int(1), ParamValue::String("b".into()))));
        assert_eq!(pairs[5], format!("{:?}", (ParamValue::Int(3), ParamValue::String("b".into()))));
    }

    #[test]
    fn ron_and_jsonl_rows_and_their_errors() {
        let rows = ron_rows("p.ron", "[{\"sample.seed\": 5}, [\"pos.text=a cat\"]]").unwrap();
        assert_eq!(rows[1].sets[0], ("pos.text".into(), ParamValue::String("a cat".into())));
        let e = ron_rows("p.ron", "[{\"sample.seed\": 5},\n {\"sample.seed\": [1]}]").unwrap_err();
        assert!(e.contains("row 1 (line 2), column \"sample.seed\"") && e.contains("a list"), "{e}");
        let e = jsonl_rows("p.jsonl", "{\"sample.seed\": 1}\n{\"sample.seed\": null}\n").unwrap_err();
        assert!(e.contains("row 1 (line 2), column \"sample.seed\"") && e.contains("null"), "{e}");
        let e = jsonl_rows("p.jsonl", "{\"sample.seed\": 1}\n{oops\n").unwrap_err();
        assert!(e.contains("row 1 (line 2)") && e.contains("not JSON"), "{e}");
    }
}
