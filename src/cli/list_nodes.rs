//! `sdgraph nodes [KIND]`: what node kinds exist and what they take.

use graph::node::{NodeSchema, ParamKind};
use graph::{Registry, suggest};

use super::EXIT_INVALID;

pub fn nodes(registry: &Registry, kind: Option<&str>, json: bool) -> i32 {
    let Some(kind) = kind else {
        let schemas: Vec<&NodeSchema> = registry.kinds().map(|k| k.schema()).collect();
        if json {
            println!("{}", serde_json::to_string_pretty(&schemas).unwrap_or_default());
        } else {
            let w = schemas.iter().map(|s| s.kind.len()).max().unwrap_or(0);
            for s in schemas {
                println!("{:w$}  {:10}  {}", s.kind, s.category, s.doc);
            }
        }
        return 0;
    };
    let Some(k) = registry.get(kind) else {
        let mut msg = format!("error: unknown node kind {kind:?}");
        if let Some(near) = suggest::nearest(kind, registry.names()) {
            msg.push_str(&format!(" (did you mean {near:?}?)"));
        }
        eprintln!("{msg}");
        return EXIT_INVALID;
    };
    let s = k.schema();
    if json {
        println!("{}", serde_json::to_string_pretty(s).unwrap_or_default());
        return 0;
    }
    println!("{} ({}): {}", s.kind, s.category, s.doc);
    if s.output_node {
        println!("output node: runs whenever the graph runs");
    }
    println!("inputs:");
    if s.inputs.is_empty() {
        println!("  (none)");
    }
    for i in &s.inputs {
        let req = if i.required { "" } else { ", optional" };
        println!("  {}: {}{req} - {}", i.name, i.ty, i.doc);
    }
    println!("outputs:");
    if s.outputs.is_empty() {
        println!("  (none)");
    }
    for o in &s.outputs {
        println!("  {}: {} - {}", o.name, o.ty, o.doc);
    }
    println!("params:");
    if s.params.is_empty() {
        println!("  (none)");
    }
    for p in &s.params {
        let ty = match &p.kind {
            ParamKind::Int { min, max } => format!("Int {min}..={max}"),
            ParamKind::Float { min, max } => format!("Float {min}..={max}"),
            ParamKind::Bool => "Bool".into(),
            ParamKind::String { .. } => "String".into(),
            ParamKind::Enum { values } => format!("one of {}", values.join(" | ")),
            ParamKind::Path => "Path".into(),
        };
        let default = match &p.default {
            Some(v) => format!(" = {v}"),
            None => " (required)".into(),
        };
        println!("  {}: {ty}{default} - {}", p.name, p.doc);
    }
    0
}
