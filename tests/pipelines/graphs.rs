//! The example graphs: each one is valid, and together they use every
//! built-in node kind, so no kind goes undocumented by example.

use std::collections::BTreeSet;

#[test]
fn every_builtin_kind_is_used_by_an_example_graph() {
    let mut reg = nodes::builtin_registry();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // graphs/plugin_demo.ron uses the example Lua plugins, which must then be used too.
    let limits = plugin::SandboxLimits::default();
    plugin::load_plugins(&[root.join("plugins")], &mut reg, &limits).unwrap_or_else(|e| panic!("{e:?}"));
    let dir = root.join("graphs");
    let mut used = BTreeSet::new();
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "ron") {
            continue;
        }
        files += 1;
        let bytes = std::fs::read(&path).unwrap();
        let g = graph::parse_graph(&path.display().to_string(), &bytes).unwrap();
        let g = graph::validate(g, &reg).unwrap_or_else(|e| panic!("{e}"));
        used.extend(g.nodes.iter().map(|n| n.kind.schema().kind.clone()));
    }
    assert!(files > 0, "no graphs found");
    let unused: Vec<&str> = reg.names().filter(|k| !used.contains(*k)).collect();
    assert!(unused.is_empty(), "kinds with no example graph: {unused:?}");
}
