//! The RON value tree with a source position on every value, so that later
//! errors (unknown port, bad parameter) can point at line and column.

/// A position in the source text. `line` and `col` are 1-based; `col` counts
/// characters (not bytes) so that it matches what an editor shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Pos {
    pub offset: usize,
    pub line: u32,
    pub col: u32,
}

impl Pos {
    /// Marks a value that came from a command-line `--set`, not the file.
    pub const COMMAND_LINE: Pos = Pos { offset: usize::MAX, line: 0, col: 0 };

    pub fn is_command_line(&self) -> bool {
        self.offset == usize::MAX
    }
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// A value and where it starts in the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub pos: Pos,
}

impl<T> Spanned<T> {
    pub fn new(value: T, pos: Pos) -> Self {
        Self { value, pos }
    }
}

pub type SValue = Spanned<RonValue>;

/// One RON value. Mirrors the RON grammar closely enough that a graph file
/// written for the `ron` crate parses the same way here.
#[derive(Debug, Clone, PartialEq)]
pub enum RonValue {
    Bool(bool),
    /// Integers from i64::MIN to u64::MAX (what RON's own reader takes); others are a parse error.
    Int(i128),
    Float(f64),
    Str(String),
    Char(char),
    /// `()`
    Unit,
    /// `None` / `Some(x)`
    Option(Option<Box<SValue>>),
    /// `[a, b]`
    List(Vec<SValue>),
    /// `{ k: v }`; keys in source order, duplicates kept (validation reports them).
    Map(Vec<(SValue, SValue)>),
    /// `(a: 1)` or `Name(a: 1)`; fields in source order, duplicates kept.
    Struct {
        name: Option<String>,
        fields: Vec<(Spanned<String>, SValue)>,
    },
    /// `(1, 2)` or `Name(1, 2)`.
    Tuple {
        name: Option<String>,
        items: Vec<SValue>,
    },
    /// A bare identifier such as an enum variant: `Foo`.
    Ident(String),
}

impl RonValue {
    /// A short name of the value's type for error messages ("a string", "a map").
    pub fn describe(&self) -> &'static str {
        match self {
            RonValue::Bool(_) => "a bool",
            RonValue::Int(_) => "an integer",
            RonValue::Float(_) => "a float",
            RonValue::Str(_) => "a string",
            RonValue::Char(_) => "a char",
            RonValue::Unit => "()",
            RonValue::Option(_) => "an option",
            RonValue::List(_) => "a list",
            RonValue::Map(_) => "a map",
            RonValue::Struct { .. } => "a struct",
            RonValue::Tuple { .. } => "a tuple",
            RonValue::Ident(_) => "an identifier",
        }
    }
}
