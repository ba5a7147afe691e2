//! The crates follow the layers, and dependencies point one way: node kinds ->
//! model library -> GPU runtime -> shaders; node kinds -> graph engine; the Lua
//! host -> graph engine; the graph engine and the model library share only the
//! pixel buffers. Read from `cargo metadata`, so a new edge fails here, not in
//! review.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Every workspace crate and the workspace crates it may depend on (normal,
/// build and dev dependencies alike; a crate may name itself as a
/// dev-dependency to switch on its own test features).
const ALLOWED: &[(&str, &[&str])] = &[
    ("sdgraph-pixels", &[]),
    ("sdgraph-shaders", &[]),
    ("sdgraph-graph", &["sdgraph-pixels"]),
    ("sdgraph-gpu", &["sdgraph-shaders"]),
    ("sdgraph-plugin", &["sdgraph-graph"]),
    ("sdgraph-models", &["sdgraph-gpu", "sdgraph-pixels"]),
    ("sdgraph-nodes", &["sdgraph-graph", "sdgraph-models", "sdgraph-gpu"]),
    ("sdgraph", &["sdgraph-graph", "sdgraph-gpu", "sdgraph-plugin", "sdgraph-models", "sdgraph-nodes"]),
];

/// Outside crates a layer must not reach: the graph engine knows nothing of
/// GPUs or Lua, the GPU runtime and the model library nothing of Lua, the Lua
/// host nothing of GPUs.
const FORBIDDEN_EXTERNAL: &[(&str, &[&str])] = &[
    ("sdgraph-graph", &["wgpu", "naga", "mlua"]),
    ("sdgraph-pixels", &["wgpu", "mlua"]),
    ("sdgraph-gpu", &["mlua", "petgraph"]),
    ("sdgraph-models", &["mlua", "petgraph"]),
    ("sdgraph-plugin", &["wgpu", "naga"]),
];

/// `cargo metadata` of the workspace's own packages.
fn metadata() -> serde_json::Value {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// Each workspace package's direct dependencies, by package name.
fn workspace_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let meta = metadata();
    let mut deps = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let name = p["name"].as_str().expect("name").to_string();
        let names = p["dependencies"].as_array().expect("dependencies").iter();
        let set = names.map(|d| d["name"].as_str().expect("dependency name").to_string()).collect();
        deps.insert(name, set);
    }
    deps
}

#[test]
fn workspace_crates_depend_only_downward() {
    let deps = workspace_dependencies();
    let known: BTreeSet<&str> = ALLOWED.iter().map(|(c, _)| *c).collect();
    let found: BTreeSet<&str> = deps.keys().map(String::as_str).collect();
    assert_eq!(found, known, "the workspace's crates and the layer table differ");
    let mut wrong = vec![];
    for (krate, allowed) in ALLOWED {
        for dep in &deps[*krate] {
            let internal = known.contains(dep.as_str());
            if internal && dep != krate && !allowed.contains(&dep.as_str()) {
                wrong.push(format!("{krate} -> {dep}"));
            }
        }
    }
    assert!(wrong.is_empty(), "dependencies against the layers: {wrong:?}");
}

#[test]
fn layers_keep_out_of_outside_crates_they_do_not_own() {
    let deps = workspace_dependencies();
    let mut wrong = vec![];
    for (krate, forbidden) in FORBIDDEN_EXTERNAL {
        for dep in forbidden.iter() {
            if deps[*krate].contains(*dep) {
                wrong.push(format!("{krate} -> {dep}"));
            }
        }
    }
    assert!(wrong.is_empty(), "layers reaching what they must not: {wrong:?}");
}

/// The platforms the README names build what they need: notify compiles a macOS backend only with one of its macOS
/// features (with default features off, none is on and the build breaks there), and the Ctrl-C handler must not be
/// limited to Unix. Checked on the manifests, since this machine cannot build for those targets.
#[test]
fn every_platform_gets_its_file_watcher_backend_and_ctrl_c_handler() {
    let meta = metadata();
    let deps_of = |package: &str| -> Vec<serde_json::Value> {
        let packages = meta["packages"].as_array().expect("packages");
        let p = packages.iter().find(|p| p["name"] == package).unwrap_or_else(|| panic!("{package} not found"));
        p["dependencies"].as_array().expect("dependencies").clone()
    };
    let notify =
        deps_of("sdgraph-graph").into_iter().find(|d| d["name"] == "notify").expect("the graph engine uses notify");
    let features: Vec<&str> = notify["features"].as_array().unwrap().iter().filter_map(|f| f.as_str()).collect();
    assert!(
        notify["uses_default_features"] == true
            || features.iter().any(|f| ["macos_fsevent", "macos_kqueue"].contains(f)),
        "notify is built without a macOS backend: {notify}"
    );
    let ctrlc = deps_of("sdgraph").into_iter().find(|d| d["name"] == "ctrlc").expect("the command uses ctrlc");
    assert!(ctrlc["target"].is_null(), "the Ctrl-C handler is only built for {}", ctrlc["target"]);
}
