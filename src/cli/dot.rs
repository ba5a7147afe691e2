//! `sdgraph dot FILE`: the graph in Graphviz DOT, node kinds on the boxes
//! and `output -> input : Type` on the edges.

use std::path::Path;

use graph::Registry;

use super::EXIT_INVALID;
use super::load::{ModelPaths, Sources, load};
use super::run::report_errors;
use graph::comfy::MissingFiles;

pub fn dot(registry: &Registry, models: &ModelPaths, file: &Path, sets: &[String]) -> i32 {
    let sources = Sources { registry, models, missing: MissingFiles::Warn };
    let g = match load(file, sets, &sources).and_then(|l| graph::validate(l.graph, registry)) {
        Ok(g) => g,
        Err(e) => {
            report_errors(&e, false);
            return EXIT_INVALID;
        }
    };
    println!("{}", to_dot(&g));
    0
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n"))
}

pub fn to_dot(g: &graph::ValidGraph) -> String {
    let mut out = format!("digraph {} {{\n    rankdir=LR;\n    node [shape=box];\n", quote(&g.graph.file));
    for n in &g.nodes {
        let shape = if n.kind.schema().output_node { ", peripheries=2" } else { "" };
        out.push_str(&format!(
            "    {} [label={}{shape}];\n",
            quote(&n.id),
            quote(&format!("{}\n{}", n.id, n.kind.schema().kind))
        ));
    }
    for n in &g.nodes {
        for e in &n.inputs {
            let src = &g.nodes[e.from];
            let out_name = &src.kind.schema().outputs[e.output].name;
            out.push_str(&format!(
                "    {} -> {} [label={}];\n",
                quote(&src.id),
                quote(&n.id),
                quote(&format!("{out_name} -> {} : {}", e.port, e.ty))
            ));
        }
    }
    out.push('}');
    out
}
