//! Plugin declarations (`node { ... }`) and the [`NodeKind`] that runs them.
//!
//! Loading executes the file once in a sandbox, reads every table passed to
//! `node`, and turns each into a [`NodeSchema`] (checking names, port types,
//! param kinds, ranges and defaults, with the line of the `node` call in
//! every message). Running executes the file again in a fresh sandbox, picks
//! the kind's `run` function and calls it with the inputs, params and a
//! context table.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use mlua::{Function, Lua, Table};

use super::api::{value_from_lua, value_to_lua};
use super::sandbox::{Sandbox, on_plugin_thread, rt};
use super::{PluginError, SandboxLimits};
use graph::node::{
    InputSpec, NodeError, NodeInputs, NodeKind, NodeSchema, OutputSpec, ParamKind, ParamSpec, ParamValue, RunContext,
};
use graph::schema::check_name;
use graph::types::PortType;
use graph::value::Value;

/// Where `node` collects declarations, in the Lua registry.
const DECLS_KEY: &str = "sdgraph.plugin.decls";

/// One plugin file's text and where it came from, shared by its kinds.
struct PluginFile {
    label: String,
    dir: Option<PathBuf>,
    source: Vec<u8>,
    limits: SandboxLimits,
    digest: u64,
}

/// A node kind declared by a Lua plugin.
pub struct PluginKind {
    schema: NodeSchema,
    file: Arc<PluginFile>,
}

impl std::fmt::Debug for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PluginKind({:?} from {})", self.schema.kind, self.file.label)
    }
}

/// Executes a plugin file and returns the kinds it declares.
pub(crate) fn load(
    path: &Path,
    label: &str,
    dir: Option<&Path>,
    source: Vec<u8>,
    limits: &SandboxLimits,
) -> Result<Vec<Arc<dyn NodeKind>>, PluginError> {
    let mut h = DefaultHasher::new();
    source.hash(&mut h);
    let file = Arc::new(PluginFile {
        label: label.to_string(),
        dir: dir.map(Path::to_path_buf),
        source,
        limits: limits.clone(),
        digest: h.finish(),
    });
    let f = file.clone();
    let declared = on_plugin_thread(None, Arc::new(AtomicBool::new(false)), move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| declare(&f)))
            .unwrap_or_else(|_| Err(format!("{}: internal error (panic) while loading the plugin", f.label)))
    })
    .and_then(|r| r);
    let schemas = declared.map_err(|message| PluginError { file: path.to_path_buf(), message })?;
    Ok(schemas
        .into_iter()
        .map(|schema| Arc::new(PluginKind { schema, file: file.clone() }) as Arc<dyn NodeKind>)
        .collect())
}

/// A sandbox with the plugin file executed in it: its `node` declarations
/// (table and line of the call), in file order.
fn execute(file: &PluginFile, cancel: Option<Arc<AtomicBool>>) -> Result<(Sandbox, Vec<(Table, usize)>), String> {
    let sb = Sandbox::new(&file.label, file.dir.as_deref(), &file.limits, cancel)
        .map_err(|e| format!("{}: cannot create a Lua state: {e}", file.label))?;
    let decls = sb
        .window(file.limits.load_time, "while loading the plugin", || {
            install_node(&sb.lua)?;
            sb.exec_file(&file.source)?;
            let list: Table = sb.lua.named_registry_value(DECLS_KEY)?;
            let mut out = Vec::new();
            for entry in list.sequence_values::<Table>() {
                let entry = entry?;
                out.push((entry.raw_get::<Table>(1)?, entry.raw_get::<usize>(2)?));
            }
            Ok(out)
        })
        .map_err(|e| sb.describe(&e))?;
    Ok((sb, decls))
}

/// The global `node(decl)`: records `decl` and the line it was called from.
fn install_node(lua: &Lua) -> mlua::Result<()> {
    lua.set_named_registry_value(DECLS_KEY, lua.create_table()?)?;
    let node = lua.create_function(|lua, decl: mlua::Value| {
        let mlua::Value::Table(decl) = decl else {
            return Err(rt(format!(
                "node expects a table: node {{ kind = \"Name\", outputs = {{...}}, run = function(inputs, params, ctx) ... end }}, got a {}",
                decl.type_name()
            )));
        };
        let line = lua.inspect_stack(1, |d| d.current_line()).flatten().unwrap_or(0);
        let list: Table = lua.named_registry_value(DECLS_KEY)?;
        let entry = lua.create_table()?;
        entry.raw_set(1, decl)?;
        entry.raw_set(2, line)?;
        list.raw_push(entry)
    })?;
    lua.globals().raw_set("node", node)
}

fn declare(file: &PluginFile) -> Result<Vec<NodeSchema>, String> {
    let (sb, decls) = execute(file, None)?;
    if decls.is_empty() {
        return Err(format!(
            "{}: the plugin declares no node kinds; call node {{ kind = \"Name\", outputs = {{...}}, run = function(inputs, params, ctx) ... end }}",
            file.label
        ));
    }
    let mut schemas: Vec<(NodeSchema, usize)> = Vec::new();
    let mut errors = Vec::new();
    for (decl, line) in &decls {
        let at = format!("{}:{line}", file.label);
        match sb.window(file.limits.load_time, "while loading the plugin", || Ok(schema_of(decl, &file.label))) {
            Ok(Ok(s)) => {
                if let Some((_, first)) = schemas.iter().find(|(o, _)| o.kind == s.kind) {
                    errors.push(format!(
                        "{at}: node kind {:?} is declared twice in this file (first at line {first})",
                        s.kind
                    ));
                } else {
                    schemas.push((s, *line));
                }
            }
            Ok(Err(e)) => errors.push(format!("{at}: {e}")),
            Err(e) => errors.push(sb.describe(&e)),
        }
    }
    if errors.is_empty() { Ok(schemas.into_iter().map(|(s, _)| s).collect()) } else { Err(errors.join("\n")) }
}

// ---------------------------------------------------------------- reading declarations

const NODE_FIELDS: &[&str] = &["kind", "category", "doc", "version", "inputs", "outputs", "params", "run"];
const PORT_FIELDS: &[&str] = &["name", "type", "doc", "optional"];
const PARAM_FIELDS: &[&str] = &["name", "type", "default", "min", "max", "values", "multiline", "doc"];
const PARAM_TYPES: &str = "int, float, bool, string, enum or path";

fn type_name(v: &mlua::Value) -> &'static str {
    match v {
        mlua::Value::Integer(_) | mlua::Value::Number(_) => "number",
        v => v.type_name(),
    }
}

fn check_fields(t: &Table, allowed: &[&str], what: &str) -> Result<(), String> {
    for pair in t.pairs::<mlua::Value, mlua::Value>() {
        let (k, _) = pair.map_err(|e| e.to_string())?;
        let name = match &k {
            mlua::Value::String(s) => s.to_string_lossy(),
            k => return Err(format!("{what}: unexpected {} key; fields are {}", type_name(k), allowed.join(", "))),
        };
        if !allowed.contains(&name.as_str()) {
            let mut msg = format!("{what}: unknown field {name:?}; fields are {}", allowed.join(", "));
            if let Some(near) = graph::suggest::nearest(&name, allowed.iter().copied()) {
                msg.push_str(&format!(" (did you mean {near:?}?)"));
            }
            return Err(msg);
        }
    }
    Ok(())
}

fn opt_string(t: &Table, key: &str, what: &str) -> Result<Option<String>, String> {
    match t.raw_get::<mlua::Value>(key).map_err(|e| e.to_string())? {
        mlua::Value::Nil => Ok(None),
        mlua::Value::String(s) => {
            Ok(Some(s.to_str().map_err(|_| format!("{what}: `{key}` is not valid UTF-8"))?.to_string()))
        }
        v => Err(format!("{what}: `{key}` must be a string, got a {}", type_name(&v))),
    }
}

fn opt_bool(t: &Table, key: &str, what: &str) -> Result<Option<bool>, String> {
    match t.raw_get::<mlua::Value>(key).map_err(|e| e.to_string())? {
        mlua::Value::Nil => Ok(None),
        mlua::Value::Boolean(b) => Ok(Some(b)),
        v => Err(format!("{what}: `{key}` must be true or false, got a {}", type_name(&v))),
    }
}

fn opt_int(v: &mlua::Value, what: &str) -> Result<Option<i64>, String> {
    match v {
        mlua::Value::Nil => Ok(None),
        mlua::Value::Integer(i) => Ok(Some(*i)),
        mlua::Value::Number(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(Some(*f as i64)),
        v => Err(format!("{what} must be an integer, got {}", describe_value(v))),
    }
}

fn opt_number(v: &mlua::Value, what: &str) -> Result<Option<f64>, String> {
    match v {
        mlua::Value::Nil => Ok(None),
        mlua::Value::Integer(i) => Ok(Some(*i as f64)),
        mlua::Value::Number(f) if !f.is_nan() => Ok(Some(*f)),
        v => Err(format!("{what} must be a number, got {}", describe_value(v))),
    }
}

fn describe_value(v: &mlua::Value) -> String {
    match v {
        mlua::Value::Integer(i) => i.to_string(),
        mlua::Value::Number(f) => f.to_string(),
        mlua::Value::String(s) => format!("the string {:?}", s.to_string_lossy()),
        v => format!("a {}", v.type_name()),
    }
}

fn checked_name(name: &str, what: &str) -> Result<(), String> {
    check_name(name).map_err(|why| format!("{what}: bad name {name:?}: {why}"))
}

/// The entries of an `inputs` / `outputs` / `params` table: either a map
/// from name to spec (taken in name order) or an array of specs with a
/// `name` field (taken in array order).
fn entries(t: &Table, what: &str) -> Result<Vec<(String, mlua::Value)>, String> {
    let n = t.raw_len();
    let count = t.pairs::<mlua::Value, mlua::Value>().count();
    let mut out = Vec::new();
    if n > 0 && n == count {
        for i in 1..=n {
            let v: mlua::Value = t.raw_get(i).map_err(|e| e.to_string())?;
            let mlua::Value::Table(spec) = &v else {
                return Err(format!(
                    "{what}[{i}]: expected a table {{ name = \"...\", type = \"...\" }}, got {}",
                    describe_value(&v)
                ));
            };
            let name = opt_string(spec, "name", &format!("{what}[{i}]"))?
                .ok_or_else(|| format!("{what}[{i}]: missing `name` (needed in the array form)"))?;
            if out.iter().any(|(n, _)| *n == name) {
                return Err(format!("{what}[{i}]: {name:?} is declared twice"));
            }
            out.push((name, v));
        }
    } else {
        let mut named = BTreeMap::new();
        for pair in t.pairs::<mlua::Value, mlua::Value>() {
            let (k, v) = pair.map_err(|e| e.to_string())?;
            let mlua::Value::String(k) = k else {
                return Err(format!("{what}: keys must be names, or the whole table an array of specs"));
            };
            let k = k.to_str().map_err(|_| format!("{what}: a name is not valid UTF-8"))?.to_string();
            named.insert(k, v);
        }
        out.extend(named);
    }
    Ok(out)
}

fn port_type(name: &str, what: &str) -> Result<PortType, String> {
    PortType::from_name(name).ok_or_else(|| {
        let all: Vec<&str> = PortType::ALL.iter().map(|t| t.name()).collect();
        let mut msg = format!("{what}: unknown type {name:?}; types are {}", all.join(", "));
        if let Some(near) = graph::suggest::nearest(name, all.iter().copied()) {
            msg.push_str(&format!(" (did you mean {near:?}?)"));
        }
        msg
    })
}

/// One port: `"Type"` or `{ type = "Type", doc = "...", optional = true }`.
/// Returns type, doc and optional.
fn port(v: &mlua::Value, what: &str, allow_optional: bool) -> Result<(PortType, String, bool), String> {
    match v {
        mlua::Value::String(s) => Ok((port_type(&s.to_string_lossy(), what)?, String::new(), false)),
        mlua::Value::Table(spec) => {
            let fields: &[&str] = if allow_optional { PORT_FIELDS } else { &PORT_FIELDS[..3] };
            check_fields(spec, fields, what)?;
            let ty = opt_string(spec, "type", what)?.ok_or_else(|| format!("{what}: missing `type`"))?;
            let doc = opt_string(spec, "doc", what)?.unwrap_or_default();
            let optional = opt_bool(spec, "optional", what)?.unwrap_or(false);
            Ok((port_type(&ty, what)?, doc, optional))
        }
        v => Err(format!(
            "{what}: expected a type name such as \"Image\" or a table {{ type = ..., doc = ... }}, got {}",
            describe_value(v)
        )),
    }
}

/// Fields that only some param types take: (field, the types, those types in words).
const TYPE_ONLY_FIELDS: [(&str, &[&str], &str); 4] = [
    ("min", &["int", "float"], "int and float"),
    ("max", &["int", "float"], "int and float"),
    ("values", &["enum"], "enum"),
    ("multiline", &["string"], "string"),
];

fn param(name: &str, v: &mlua::Value, what: &str) -> Result<ParamSpec, String> {
    let mlua::Value::Table(spec) = v else {
        return Err(format!(
            "{what}: expected a table {{ type = \"float\", default = ..., doc = ... }}, got {}",
            describe_value(v)
        ));
    };
    check_fields(spec, PARAM_FIELDS, what)?;
    let ty = opt_string(spec, "type", what)?.ok_or_else(|| format!("{what}: missing `type` ({PARAM_TYPES})"))?;
    let doc = opt_string(spec, "doc", what)?.unwrap_or_default();
    let kind = param_kind(spec, &ty, what)?;
    let default = match spec.raw_get::<mlua::Value>("default").map_err(|e| e.to_string())? {
        mlua::Value::Nil => None,
        d => param_default(&kind, &d, what)?,
    };
    Ok(ParamSpec { name: name.to_string(), kind, default, doc })
}

/// The kind a param's `type` (and `min`, `max`, `values`, `multiline`) declare.
fn param_kind(spec: &Table, ty: &str, what: &str) -> Result<ParamKind, String> {
    let get = |k: &str| spec.raw_get::<mlua::Value>(k).map_err(|e| e.to_string());
    let ty_l = ty.to_ascii_lowercase();
    if !["int", "float", "bool", "string", "path", "enum"].contains(&ty_l.as_str()) {
        return Err(format!("{what}: unknown param type {ty:?}; types are {PARAM_TYPES}"));
    }
    for (field, types, in_words) in TYPE_ONLY_FIELDS {
        if !types.contains(&ty_l.as_str()) && !matches!(get(field)?, mlua::Value::Nil) {
            return Err(format!("{what}: `{field}` applies only to {in_words} params"));
        }
    }
    Ok(match ty_l.as_str() {
        "int" => {
            let min = opt_int(&get("min")?, &format!("{what}: `min`"))?.unwrap_or(i64::MIN);
            let max = opt_int(&get("max")?, &format!("{what}: `max`"))?.unwrap_or(i64::MAX);
            if min > max {
                return Err(format!("{what}: min {min} is greater than max {max}"));
            }
            ParamKind::Int { min: min.into(), max: max.into() }
        }
        "float" => {
            let min = opt_number(&get("min")?, &format!("{what}: `min`"))?.unwrap_or(f64::MIN);
            let max = opt_number(&get("max")?, &format!("{what}: `max`"))?.unwrap_or(f64::MAX);
            if min > max {
                return Err(format!("{what}: min {min} is greater than max {max}"));
            }
            ParamKind::Float { min, max }
        }
        "bool" => ParamKind::Bool,
        "string" => ParamKind::String { multiline: opt_bool(spec, "multiline", what)?.unwrap_or(false) },
        "path" => ParamKind::Path,
        _ => {
            let mlua::Value::Table(vals) = get("values")? else {
                return Err(format!("{what}: an enum needs `values = {{ \"a\", \"b\", ... }}`"));
            };
            ParamKind::Enum { values: enum_values(&vals, what)? }
        }
    })
}

/// An enum's `values`: distinct UTF-8 strings, at least one.
fn enum_values(vals: &Table, what: &str) -> Result<Vec<String>, String> {
    let mut values = Vec::new();
    for (i, v) in vals.sequence_values::<mlua::Value>().enumerate() {
        match v.map_err(|e| e.to_string())? {
            mlua::Value::String(s) => {
                let s = s.to_str().map_err(|_| format!("{what}: values[{}] is not valid UTF-8", i + 1))?;
                let s = s.to_string();
                if values.contains(&s) {
                    return Err(format!("{what}: value {s:?} is listed twice"));
                }
                values.push(s);
            }
            v => return Err(format!("{what}: values[{}] must be a string, got {}", i + 1, describe_value(&v))),
        }
    }
    if values.is_empty() {
        return Err(format!("{what}: an enum needs at least one value"));
    }
    Ok(values)
}

/// A param's `default`, checked against its kind.
fn param_default(kind: &ParamKind, d: &mlua::Value, what: &str) -> Result<Option<ParamValue>, String> {
    let raw = match (kind, d) {
        (ParamKind::Int { .. }, _) => opt_int(d, &format!("{what}: `default`"))?.map(|v| ParamValue::Int(v.into())),
        (ParamKind::Float { .. }, _) => opt_number(d, &format!("{what}: `default`"))?.map(ParamValue::Float),
        (ParamKind::Bool, mlua::Value::Boolean(b)) => Some(ParamValue::Bool(*b)),
        (_, mlua::Value::String(s)) if !matches!(kind, ParamKind::Bool) => Some(ParamValue::String(
            s.to_str().map_err(|_| format!("{what}: `default` is not valid UTF-8"))?.to_string(),
        )),
        (k, d) => return Err(format!("{what}: `default` must be {}, got {}", k.expected(), describe_value(d))),
    };
    raw.map(|v| kind.check(&v).map_err(|e| format!("{what}: default: {e}"))).transpose()
}

/// The schema a `node { ... }` table declares.
fn schema_of(decl: &Table, label: &str) -> Result<NodeSchema, String> {
    check_fields(decl, NODE_FIELDS, "node")?;
    let kind = opt_string(decl, "kind", "node")?.ok_or("node: missing `kind = \"Name\"`")?;
    checked_name(&kind, "node: `kind`")?;
    let what = format!("node {kind:?}");
    let category = opt_string(decl, "category", &what)?.unwrap_or_else(|| "plugin".into());
    let doc = opt_string(decl, "doc", &what)?.unwrap_or_default();
    let version = match opt_int(&decl.raw_get("version").map_err(|e| e.to_string())?, &format!("{what}: `version`"))? {
        None => 1,
        Some(v) if (1..=u32::MAX as i64).contains(&v) => v as u32,
        Some(v) => return Err(format!("{what}: `version` must be a positive integer, got {v}")),
    };
    if !matches!(decl.raw_get::<mlua::Value>("run").map_err(|e| e.to_string())?, mlua::Value::Function(_)) {
        return Err(format!("{what}: missing `run = function(inputs, params, ctx) ... return {{ ... }} end`"));
    }
    let table = |key: &str| -> Result<Option<Table>, String> {
        match decl.raw_get::<mlua::Value>(key).map_err(|e| e.to_string())? {
            mlua::Value::Nil => Ok(None),
            mlua::Value::Table(t) => Ok(Some(t)),
            v => Err(format!("{what}: `{key}` must be a table, got {}", describe_value(&v))),
        }
    };

    let mut schema = NodeSchema::new(&kind, &category, &doc);
    schema.version = version;
    schema.source = label.to_string();
    if let Some(t) = table("inputs")? {
        for (name, v) in entries(&t, &format!("{what}: inputs"))? {
            let w = format!("{what}, input {name:?}");
            checked_name(&name, &w)?;
            let (ty, doc, optional) = port(&v, &w, true)?;
            schema.inputs.push(InputSpec { name, ty, required: !optional, doc });
        }
    }
    if let Some(t) = table("outputs")? {
        for (name, v) in entries(&t, &format!("{what}: outputs"))? {
            let w = format!("{what}, output {name:?}");
            checked_name(&name, &w)?;
            let (ty, doc, _) = port(&v, &w, false)?;
            schema.outputs.push(OutputSpec { name, ty, doc });
        }
    }
    if schema.outputs.is_empty() {
        return Err(format!(
            "{what}: declares no outputs; add outputs = {{ name = \"Type\" }} (a node without outputs never runs)"
        ));
    }
    if let Some(t) = table("params")? {
        for (name, v) in entries(&t, &format!("{what}: params"))? {
            let w = format!("{what}, param {name:?}");
            checked_name(&name, &w)?;
            // A linked input may drive a param by name, so the two share one namespace.
            if schema.find_input(&name).is_some() || schema.find_param(&name).is_some() {
                return Err(format!("{w}: the name is already used by an input or param"));
            }
            schema.params.push(param(&name, &v, &w)?);
        }
    }
    Ok(schema)
}

// ---------------------------------------------------------------- running

impl NodeKind for PluginKind {
    fn schema(&self) -> &NodeSchema {
        &self.schema
    }

    fn run(&self, ctx: &mut RunContext<'_>, inputs: &NodeInputs) -> Result<Vec<Value>, NodeError> {
        // Path params reach Lua resolved against the graph's folder, as built-in nodes see them.
        let mut params = inputs.params.clone();
        for p in &self.schema.params {
            if let (ParamKind::Path, Some(ParamValue::String(s))) = (&p.kind, params.get_mut(&p.name)) {
                *s = ctx.resolve(s).display().to_string();
            }
        }
        let forward = Arc::new(AtomicBool::new(false));
        let fwd = forward.clone();
        let node_id = ctx.node_id.to_string();
        let (file, schema, values) = (&self.file, &self.schema, &inputs.inputs);
        on_plugin_thread(Some(ctx.cancel), forward, move || run_plugin(file, schema, &node_id, values, &params, fwd))
            .and_then(|r| r)
            .map_err(NodeError::new)
    }

    /// The plugin's text: a plugin reloaded after an edit does not reuse results of the old one.
    fn fingerprint(&self, _ctx: &RunContext<'_>, _inputs: &NodeInputs) -> Option<String> {
        Some(format!("lua:{:016x}", self.file.digest))
    }
}

fn run_plugin(
    file: &PluginFile,
    schema: &NodeSchema,
    node_id: &str,
    inputs: &BTreeMap<String, Value>,
    params: &BTreeMap<String, ParamValue>,
    cancel: Arc<AtomicBool>,
) -> Result<Vec<Value>, String> {
    let (sb, decls) = execute(file, Some(cancel))?;
    let lua = &sb.lua;
    let mut run = None;
    for (decl, _) in &decls {
        if decl.raw_get::<Option<String>>("kind").ok().flatten().as_deref() == Some(schema.kind.as_str()) {
            run = decl.raw_get::<Option<Function>>("run").ok().flatten();
        }
    }
    let Some(run) = run else {
        return Err(format!(
            "{}: the plugin no longer declares node kind {:?} with a run function",
            file.label, schema.kind
        ));
    };
    let defined = run.info().line_defined.unwrap_or(0);
    let at = format!("{}:{defined}", file.label);
    sb.window(file.limits.run_time, "in run", || {
        let args = lua.create_table()?;
        for spec in &schema.inputs {
            if let Some(v) = inputs.get(&spec.name) {
                args.raw_set(spec.name.as_str(), value_to_lua(lua, v)?)?;
            }
        }
        let ps = lua.create_table()?;
        for (name, v) in params {
            let v = match v {
                // A plugin declares its ints within i64 (Lua's integers), so a checked value fits.
                ParamValue::Int(i) => mlua::Value::Integer(
                    i64::try_from(*i)
                        .map_err(|_| mlua::Error::runtime(format!("param {name}: {i} does not fit a Lua integer")))?,
                ),
                ParamValue::Float(f) => mlua::Value::Number(*f),
                ParamValue::Bool(b) => mlua::Value::Boolean(*b),
                ParamValue::String(s) => mlua::Value::String(lua.create_string(s)?),
            };
            ps.raw_set(name.as_str(), v)?;
        }
        let ctx = lua.create_table()?;
        ctx.raw_set("node_id", node_id)?;
        ctx.raw_set("kind", schema.kind.as_str())?;
        ctx.raw_set("file", file.label.as_str())?;

        let ret: mlua::Value = run.call((args, ps, ctx))?;
        outputs(lua, schema, ret).map_err(|e| rt(format!("{at}: run of {:?} {e}", schema.kind)))
    })
    .map_err(|e| sb.describe(&e))
}

/// The declared outputs, in order, from the table `run` returned.
fn outputs(lua: &Lua, schema: &NodeSchema, ret: mlua::Value) -> Result<Vec<Value>, String> {
    let names: Vec<&str> = schema.outputs.iter().map(|o| o.name.as_str()).collect();
    let mlua::Value::Table(t) = ret else {
        return Err(format!(
            "must return a table of outputs {{ {} = ... }}, but returned {}",
            names.join(" = ..., "),
            describe_value(&ret)
        ));
    };
    for pair in t.pairs::<mlua::Value, mlua::Value>() {
        let (k, _) = pair.map_err(|e| e.to_string())?;
        let known = matches!(&k, mlua::Value::String(s) if names.contains(&s.to_string_lossy().as_str()));
        if !known {
            return Err(format!(
                "returned an unknown output {} (outputs are {})",
                describe_value(&k),
                names.join(", ")
            ));
        }
    }
    let mut values = Vec::with_capacity(schema.outputs.len());
    for o in &schema.outputs {
        let v: mlua::Value = t.raw_get(o.name.as_str()).map_err(|e| e.to_string())?;
        if v.is_nil() {
            return Err(format!("returned no value for output {:?} ({})", o.name, o.ty));
        }
        values.push(value_from_lua(lua, v, o.ty).map_err(|e| format!("returned a bad output {:?}: {e}", o.name))?);
    }
    Ok(values)
}
