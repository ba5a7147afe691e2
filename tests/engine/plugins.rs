//! Lua plugin nodes (plugin): the example plugins, the sandbox (every
//! escape attempt and runaway is a clear error, never a panic or a hang),
//! the image/mask/latent API, declaration errors, name clashes, and plugin
//! kinds running through the executor with its cache and failure isolation.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use graph::exec::{Executor, NoProgress, NodeStatus};
use graph::{Image, Mask, NodeError, NodeInputs, NodeKind, ParamValue, PortType, RunContext, Value};
use nodes::payload::Latent;
use plugin::{SandboxLimits, load_plugin_source, load_plugins};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Tight limits so the runaway cases finish quickly.
fn small_limits() -> SandboxLimits {
    SandboxLimits {
        memory_bytes: 32 << 20,
        run_time: Duration::from_millis(400),
        load_time: Duration::from_millis(400),
    }
}

/// The kinds a plugin text declares (it must load).
fn kinds(src: &str, limits: &SandboxLimits) -> Vec<Arc<dyn NodeKind>> {
    load_plugin_source(Path::new("plugins/test.lua"), src, limits).unwrap_or_else(|e| panic!("{e}\n{src}"))
}

fn kind(src: &str) -> Arc<dyn NodeKind> {
    kinds(src, &SandboxLimits::default()).remove(0)
}

/// Runs `kind` directly (as the executor would), params defaulted then overridden.
fn run_with(
    kind: &Arc<dyn NodeKind>,
    inputs: &[(&str, Value)],
    params: &[(&str, ParamValue)],
) -> Result<Vec<Value>, NodeError> {
    let mut ni = NodeInputs::default();
    for p in &kind.schema().params {
        if let Some(d) = &p.default {
            ni.params.insert(p.name.clone(), d.clone());
        }
    }
    for (k, v) in params {
        ni.params.insert(k.to_string(), v.clone());
    }
    for (k, v) in inputs {
        ni.inputs.insert(k.to_string(), v.clone());
    }
    let progress = NoProgress;
    let cancel = AtomicBool::new(false);
    let out = std::env::temp_dir();
    let mut ctx = RunContext::new("n1", root(), &out, "", &progress, &cancel);
    kind.run(&mut ctx, &ni)
}

fn image_value(img: Image) -> Value {
    Value::Image(Arc::new(img))
}

fn image_of(v: &Value) -> Arc<Image> {
    match v {
        Value::Image(i) => i.clone(),
        v => panic!("expected an image, got {v:?}"),
    }
}

/// A test picture whose every value differs.
fn gradient(w: usize, h: usize) -> Image {
    let mut img = Image::zeros(1, h, w, 3);
    for (i, v) in img.data.iter_mut().enumerate() {
        *v = ((i * 37) % 101) as f32 / 100.0;
    }
    img
}

/// A plugin with one Int output `x` whose run body is `body`.
fn int_node(body: &str) -> String {
    format!(
        "node {{ kind = \"T\", outputs = {{ x = \"Int\" }}, run = function(inputs, params, ctx)\n{body}\nreturn {{ x = 1 }} end }}"
    )
}

fn load_err(src: &str, limits: &SandboxLimits) -> plugin::PluginError {
    match load_plugin_source(Path::new("plugins/test.lua"), src, limits) {
        Ok(k) => panic!("expected a load error, got {} kinds from\n{src}", k.len()),
        Err(e) => e,
    }
}

fn run_err(src: &str, limits: &SandboxLimits) -> String {
    let k = kinds(src, limits).remove(0);
    let t = Instant::now();
    let e = match run_with(&k, &[], &[]) {
        Ok(v) => panic!("expected an error, got {v:?} from\n{src}"),
        Err(e) => e.message,
    };
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}: {src}", t.elapsed());
    e
}

#[test]
fn example_plugins_load_and_their_kinds_validate() {
    let mut reg = nodes::builtin_registry();
    let infos = load_plugins(&[root().join("plugins")], &mut reg, &SandboxLimits::default())
        .unwrap_or_else(|e| panic!("{e:?}"));
    let mut names: Vec<&str> = infos.iter().flat_map(|i| i.kinds.iter().map(|k| k.as_str())).collect();
    names.sort();
    assert_eq!(names, ["LatentAddNoise", "PromptTemplate", "Vignette"]);
    for info in &infos {
        for k in &info.kinds {
            let s = reg.get(k).unwrap().schema();
            assert_eq!(s.source, info.file.display().to_string());
            assert!(!s.doc.is_empty() && s.outputs.iter().all(|o| !o.doc.is_empty()), "{k} lacks docs");
            assert!(
                s.params.iter().all(|p| p.default.is_some() && !p.doc.is_empty()),
                "{k}: params lack defaults/docs"
            );
        }
    }
    let v = reg.get("Vignette").unwrap().schema();
    assert_eq!(v.inputs[0].ty, PortType::Image);
    assert_eq!(v.find_param("strength").unwrap().default, Some(ParamValue::Float(0.5)));
    // The demo graph validates against builtins + examples.
    let path = root().join("graphs/plugin_demo.ron");
    let g = graph::parse_graph(&path.display().to_string(), &std::fs::read(&path).unwrap()).unwrap();
    let g = graph::validate(g, &reg).unwrap_or_else(|e| panic!("{e}"));
    let used: Vec<&str> = g.nodes.iter().map(|n| n.kind.schema().kind.as_str()).collect();
    for k in ["Vignette", "PromptTemplate", "LatentAddNoise"] {
        assert!(used.contains(&k), "plugin_demo.ron does not use {k}");
    }
    // As shipped it runs whole: the vignette, and the img2img on the demo model.
    let out = crate::common::temp_dir("plugins-demo");
    let opts = graph::exec::RunOptions {
        base_dir: root().join("graphs"),
        out_dir: out.to_path_buf(),
        graph_text: String::new(),
        progress: &NoProgress,
        cancel: Arc::new(AtomicBool::new(false)),
    };
    let r = Executor::default().run(&g, &opts);
    assert!(r.ok, "{:?}", r.errors());
    assert!(out.join("plugin_demo/vignette_00001.png").is_file());
    assert!(out.join("plugin_demo/img2img_00001.png").is_file());
    let ran = r.ids_with(NodeStatus::Executed);
    for id in ["vignette", "prompt", "noise", "frame"] {
        assert!(ran.contains(&id), "{id} did not run: {:?}", r.nodes);
    }
}

#[test]
fn every_sandbox_escape_and_runaway_is_a_clear_error() {
    let limits = small_limits();
    let cases: &[(&str, &str)] = &[
        ("os.execute('echo pwned')", "global 'os'"),
        ("io.open('/etc/passwd')", "global 'io'"),
        ("require('os')", "global 'require'"),
        ("package.loadlib('libc.so.6', 'system')", "global 'package'"),
        ("debug.sethook()", "global 'debug'"),
        ("dofile('/etc/passwd')", "global 'dofile'"),
        ("loadfile('/etc/passwd')", "global 'loadfile'"),
        ("coroutine.wrap(function() end)", "global 'coroutine'"),
        ("string.dump(function() end)", "field 'dump'"),
        ("(''):dump()", "attempt to call a nil value (method 'dump')"),
        ("load('\\27Lua\\84\\0', 'x', 'b')", "only text chunks"),
        ("local f, e = load('\\27LuaT\\0\\25\\147\\r\\n\\26\\n') assert(f, e)", "attempt to load a binary chunk"),
        ("collectgarbage('stop')", "option stop is not allowed"),
        ("setmetatable({}, { __gc = function() while true do end end })", "__gc metamethods are not allowed"),
        ("while true do end", "time limit of 400 ms exceeded in run"),
        // Building a 64 MiB result takes long enough on a loaded machine that the time limit
        // may stop it first; either is the right refusal.
        (
            "local s = string.rep('a', 1 << 20) s:gsub('a', string.rep('b', 64))",
            "memory limit of 32 MiB exceeded|time limit of 400 ms exceeded",
        ),
        ("local t = {} while true do t[#t + 1] = {} end", "memory limit of 32 MiB exceeded"),
        ("local s = 'x' while true do s = s .. s end", "memory limit of 32 MiB exceeded"),
        ("local function f(n) return 1 + f(n + 1) end f(1)", "stack overflow|memory limit of 32 MiB exceeded"),
        (
            "local t = setmetatable({}, { __index = function(t, k) return t[k + 1] end }) local _ = t[1]",
            "stack overflow",
        ),
        ("local function f() return ('a'):gsub('a', f) end f()", "stack overflow"),
        ("local s = string.rep('a', 200000) s:find('.-.-.-b')", "time limit of 400 ms exceeded"),
        ("local s = string.rep('a', 1 << 23) s:find(string.rep('a', 100000) .. 'b', 1, true)", "time limit of 400 ms"),
        ("while true do pcall(function() while true do end end) end", "time limit of 400 ms exceeded in run"),
        ("while true do xpcall(function() while true do end end, function() while true do end end) end", "time limit"),
        ("while true do load(function() while true do end end) end", "time limit of 400 ms exceeded in run"),
        ("string.rep('x', 1 << 40)", "resulting string too large"),
        ("string.rep('x', 1 << 28)", "memory limit of 32 MiB exceeded"),
        ("image.new(16384, 16384, 4, 16)", "memory limit of 32 MiB exceeded: the new image needs 65536 MiB more"),
        ("local keep = {} for i = 1, 100 do keep[i] = image.new(512, 512) end", "memory limit of 32 MiB exceeded"),
        ("local img = image.new(8, 8) img:map(function() while true do end end)", "time limit"),
        ("error('boom')", "plugins/test.lua:2: boom"),
        ("error({ code = 1 })", "plugins/test.lua: "),
        ("read_file('x')", "read_file: this plugin was not loaded from a folder"),
        ("image.new(0, 4)", "image.new: width = 0 must be in 1..=16384"),
        ("image.new(4, 4):get(4, 0, 0)", "plugins/test.lua:2: image:get: x = 4 is outside 0..3"),
        ("image.new(4, 4):set(0, 0, 3, 1.0)", "image:set: channel = 3 is outside 0..2"),
        (
            "image.new(4, 4):get('a', 0, 0)",
            "plugins/test.lua:2: bad argument #1 to 'image:get': expected an integer, got string",
        ),
        ("image.from_table({ 1, 2, 3 }, 2, 2)", "image.from_table: the table has 3 values; expected 12"),
        ("image.from_table({ 1, 2, 'x' }, 1, 1)", "element 3 is a string; expected a number"),
        ("mask.new(2, 2):set_table({ 1, 2 })", "mask:set_table: the table has 2 values; expected 4"),
        ("image.new(2, 2):map(function(r, g, b) return r, g end)", "returned 2 values at x = 0, y = 0; expected 3"),
        ("image.new(2, 2):map(function(r, g, b) return r, g, 'b' end)", "returned a string at x = 0, y = 0"),
        ("string.find('x', '(()')", "unfinished capture"),
    ];
    for (body, want) in cases {
        let e = run_err(&int_node(body), &limits);
        // "a|b": either message is right (deep recursion may hit the memory limit first).
        assert!(want.split('|').any(|w| e.contains(w)), "{body}\n  gave: {e}\n  wanted: {want}");
        assert!(e.starts_with("plugins/test.lua"), "{body}: error does not name the plugin file: {e}");
    }
    // With room to spare, deep recursion is Lua's own "stack overflow" (1M slots), and C-level
    // recursion (metamethods, callbacks into Rust and back) stops at Lua's 200 nested C calls.
    for body in [
        "local function f(n) return 1 + f(n + 1) end f(1)",
        "local t = setmetatable({}, { __index = function(t, k) return t[k + 1] end }) local _ = t[1]",
        "local function f() return ('a'):gsub('a', f) end f()",
        "local img = image.new(2, 2) local function f() img:map(f) return 0, 0, 0 end f()",
    ] {
        let e = run_err(&int_node(body), &SandboxLimits::default());
        assert!(e.contains("stack overflow") || e.contains("nested more than"), "{body}\n  gave: {e}");
    }
    // The same limits apply while the file loads (its top level runs under the load limit). The memory case
    // gets a long load time, so a busy machine (slow allocation) cannot trip the time limit first.
    let long_load = SandboxLimits { load_time: Duration::from_secs(60), ..small_limits() };
    for (top, want, limits) in [
        ("while true do end", "plugins/test.lua:1: time limit of 400 ms exceeded while loading the plugin", &limits),
        ("local t = {} while true do t[#t + 1] = {} end", "memory limit of 32 MiB exceeded", &long_load),
        ("os.exit(1)", "plugins/test.lua:1: attempt to index a nil value (global 'os')", &limits),
        ("\u{1b}Lua", "binary chunk", &limits),
    ] {
        let src = format!("{top}\n{}", int_node(""));
        let e = load_err(&src, limits);
        assert!(e.message.contains(want), "{top}\n  gave: {e}\n  wanted: {want}");
    }
}

#[test]
fn pcall_xpcall_and_load_keep_their_meaning() {
    let k = kind(&int_node(
        r#"
local ok, e = pcall(error, "x", 0)
assert(not ok and e == "x")
local ok2, a, b = pcall(function(x, y) return x + y, 7 end, 1, 2)
assert(ok2 and a == 3 and b == 7)
local ok3, h = xpcall(function() error("y", 0) end, function(m) return "handled " .. m end)
assert(not ok3 and h == "handled y", h)
local ok4, c = xpcall(function(x) return x * 2 end, print, 21)
assert(ok4 and c == 42)
local f = load("return 1 + ...")
assert(f(2) == 3)
local g, err = load("return +")
assert(g == nil and err:find("unexpected symbol"), err)
local env = {}
load("v = 5", "chunk", "t", env)()
assert(env.v == 5 and v == nil)
local parts = { "return ", "6 * 7" }
local i = 0
assert(load(function() i = i + 1 return parts[i] end)() == 42)
"#,
    ));
    assert!(matches!(run_with(&k, &[], &[]).unwrap()[..], [Value::Int(1)]));
}

#[test]
fn bad_return_values_are_errors_naming_the_output() {
    let cases: &[(&str, &str, &str)] = &[
        ("Int", "return nil", "run of \"T\" must return a table of outputs { x = ... }, but returned a nil"),
        ("Int", "return 5", "must return a table of outputs { x = ... }, but returned 5"),
        ("Int", "return {}", "returned no value for output \"x\" (Int)"),
        ("Int", "return { x = 1, y = 2 }", "returned an unknown output the string \"y\" (outputs are x)"),
        ("Int", "return { x = 'one' }", "returned a bad output \"x\": expected an integer, got a string"),
        ("Int", "return { x = 1.5 }", "expected an integer, got a number"),
        ("Float", "return { x = 0/0 }", "expected a finite number, got NaN"),
        ("Float", "return { x = true }", "expected a number, got a boolean"),
        ("String", "return { x = 7 }", "expected a string, got a number"),
        ("String", "return { x = '\\255' }", "not valid UTF-8"),
        ("Bool", "return { x = 1 }", "expected a boolean, got a number"),
        (
            "Image",
            "return { x = {} }",
            "expected an Image (from the inputs, image.new or image.from_table), got a table",
        ),
        ("Image", "return { x = mask.new(2, 2) }", "expected an Image, got a Mask"),
        ("Mask", "return { x = image.new(2, 2) }", "expected a Mask, got an Image"),
        ("Latent", "return { x = 3 }", "expected a Latent table, got a number"),
        (
            "Latent",
            "return { x = { shape = { 1, 4, 2, 2 }, samples = { 1, 2 } } }",
            "bad Latent table: `samples` has 2 values, but the shape needs 16",
        ),
        ("Latent", "local t = {} t.self = t return { x = t }", "Latent table: "),
        ("Model", "return { x = {} }", "expected a Model (a Model input passed on), got a table"),
    ];
    nodes::plugin_values::register();
    for (ty, ret, want) in cases {
        let src = format!("node {{ kind = \"T\", outputs = {{ x = \"{ty}\" }}, run = function()\n{ret}\nend }}");
        let e = run_err(&src, &SandboxLimits::default());
        assert!(e.contains(want), "{ret}\n  gave: {e}\n  wanted: {want}");
        // Located at the run function's definition.
        assert!(e.starts_with("plugins/test.lua:1: run of \"T\""), "{e}");
    }
}

#[test]
fn declaration_errors_name_the_file_and_line() {
    let cases: &[(&str, &str)] = &[
        ("x = ", "plugins/test.lua:1: unexpected symbol near <eof>"),
        ("local a = 1", "plugins/test.lua: the plugin declares no node kinds"),
        ("node('Vignette')", "plugins/test.lua:1: node expects a table"),
        ("\n\nnode { kind = 'A', outputs = { x = 'Int' } }", "plugins/test.lua:3: node \"A\": missing `run"),
        (
            "node { kind = 'A', outputs = { x = 'Imag' }, run = print }",
            "node \"A\", output \"x\": unknown type \"Imag\"; types are Model, Clip",
        ),
        ("node { kind = 'A', outputs = { x = 'Imag' }, run = print }", "(did you mean \"Image\"?)"),
        ("node { kind = 'A', output = { x = 'Int' }, run = print }", "unknown field \"output\""),
        ("node { kind = 'A', run = print }", "declares no outputs"),
        (
            "node { kind = 'A', outputs = { { name = 'x', type = 'Int' }, { name = 'x', type = 'Float' } }, run = print }",
            "node \"A\": outputs[2]: \"x\" is declared twice",
        ),
        ("node { outputs = { x = 'Int' }, run = print }", "node: missing `kind"),
        ("node { kind = '', outputs = { x = 'Int' }, run = print }", "bad name \"\": it is empty"),
        (
            "node { kind = 'A', outputs = { x = 'Int' }, run = print, params = { s = { type = 'float', min = 0, max = 1, default = 2 } } }",
            "node \"A\", param \"s\": default: value 2 is out of range 0..=1",
        ),
        (
            "node { kind = 'A', outputs = { x = 'Int' }, run = print, params = { s = { type = 'enum', values = { 'a' }, default = 'b' } } }",
            "param \"s\": default: \"b\" is not allowed; expected one of \"a\"",
        ),
        (
            "node { kind = 'A', outputs = { x = 'Int' }, run = print, params = { s = { type = 'enum' } } }",
            "an enum needs `values",
        ),
        (
            "node { kind = 'A', outputs = { x = 'Int' }, run = print, params = { s = { type = 'number' } } }",
            "unknown param type \"number\"",
        ),
        (
            "node { kind = 'A', outputs = { x = 'Int' }, run = print, params = { s = { type = 'int', default = 1.5 } } }",
            "`default` must be an integer, got 1.5",
        ),
        (
            "node { kind = 'A', outputs = { x = 'Int' }, run = print, params = { s = { type = 'bool', min = 1 } } }",
            "`min` applies only to int and float params",
        ),
        (
            "node { kind = 'A', inputs = { s = 'Int' }, outputs = { x = 'Int' }, run = print, params = { s = { type = 'int' } } }",
            "param \"s\": the name is already used by an input or param",
        ),
        (
            "node { kind = 'A', outputs = { x = 'Int' }, run = print }\nnode { kind = 'A', outputs = { x = 'Int' }, run = print }",
            "plugins/test.lua:2: node kind \"A\" is declared twice in this file (first at line 1)",
        ),
    ];
    for (src, want) in cases {
        let e = load_err(src, &SandboxLimits::default());
        assert!(e.message.contains(want), "{src}\n  gave: {e}\n  wanted: {want}");
        assert!(e.message.starts_with("plugins/test.lua"), "{e}");
    }
}

#[test]
fn declarations_become_schemas() {
    let k = kind(
        r#"
node {
  kind = "Demo", category = "test", doc = "A demo.", version = 3,
  inputs = { { name = "b", type = "Mask" }, { name = "a", type = "image", doc = "A picture.", optional = true } },
  outputs = { out = { type = "Image", doc = "Out." } },
  params = {
    n = { type = "int", min = 1, max = 9, default = 2, doc = "N." },
    mode = { type = "enum", values = { "x", "y" }, default = "y" },
    text = { type = "string", multiline = true },
    file = { type = "path", default = "a.png" },
    on = { type = "bool", default = true },
  },
  run = function(inputs, params) return { out = inputs.a } end,
}"#,
    );
    let s = k.schema();
    assert_eq!((s.kind.as_str(), s.category.as_str(), s.doc.as_str(), s.version), ("Demo", "test", "A demo.", 3));
    assert_eq!(s.source, "plugins/test.lua");
    // The array form keeps its order; the map form is sorted by name.
    let ins: Vec<(&str, PortType, bool)> = s.inputs.iter().map(|i| (i.name.as_str(), i.ty, i.required)).collect();
    assert_eq!(ins, [("b", PortType::Mask, true), ("a", PortType::Image, false)]);
    let ps: Vec<&str> = s.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(ps, ["file", "mode", "n", "on", "text"]);
    assert_eq!(s.find_param("n").unwrap().kind, graph::ParamKind::Int { min: 1, max: 9 });
    assert_eq!(s.find_param("text").unwrap().default, None);
    assert_eq!(s.find_param("text").unwrap().kind, graph::ParamKind::String { multiline: true });
    assert_eq!(s.find_param("file").unwrap().kind, graph::ParamKind::Path);
}

#[test]
fn vignette_darkens_corners_and_keeps_the_centre() {
    let mut reg = graph::Registry::new();
    load_plugins(&[root().join("plugins/vignette.lua")], &mut reg, &SandboxLimits::default()).unwrap();
    let v = reg.get("Vignette").unwrap().clone();
    let (w, h) = (65, 49);
    let mut img = Image::zeros(2, h, w, 3);
    img.data.fill(0.8);
    let out = run_with(&v, &[("image", image_value(img.clone()))], &[("strength", ParamValue::Float(0.6))]).unwrap();
    let out = image_of(&out[0]);
    assert_eq!((out.batch, out.height, out.width, out.channels), (2, h, w, 3));
    for b in 0..2 {
        for c in 0..3 {
            assert_eq!(out.get(b, h / 2, w / 2, c), 0.8, "centre changed");
            for (y, x) in [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)] {
                assert!((out.get(b, y, x, c) - 0.8 * 0.4).abs() < 1e-5, "corner {x},{y}: {}", out.get(b, y, x, c));
            }
        }
    }
    // Darker monotonically along the diagonal away from the centre.
    let diag: Vec<f32> = (0..=h / 2).map(|i| out.get(0, h / 2 - i, w / 2 - i * w / h, 0)).collect();
    assert!(diag.windows(2).all(|p| p[1] <= p[0] + 1e-6), "{diag:?}");
    // The input was shared, not changed.
    assert!(img.data.iter().all(|&x| x == 0.8));
    // strength 0 is the identity.
    let same = run_with(&v, &[("image", image_value(img.clone()))], &[("strength", ParamValue::Float(0.0))]).unwrap();
    assert_eq!(*image_of(&same[0]), img);
}

const INVERTERS: &str = r#"
local function check(img) assert(img.channels == 3) end
node { kind = "MapInvert", inputs = { image = "Image" }, outputs = { image = "Image" },
  run = function(inputs)
    local out = inputs.image:map(function(r, g, b, x, y, n) return 1 - r, 1 - g, (1 - b) * (x + y + n) end)
    return { image = out }
  end }
node { kind = "BulkInvert", inputs = { image = "Image" }, outputs = { image = "Image" },
  run = function(inputs)
    local img = inputs.image
    local t, w, h, c = img:to_table(), img.width, img.height, img.channels
    for i = 1, #t, c do
      local p = (i - 1) // c
      local x, y, n = p % w, (p // w) % h, p // (w * h)
      t[i], t[i + 1], t[i + 2] = 1 - t[i], 1 - t[i + 1], (1 - t[i + 2]) * (x + y + n)
    end
    return { image = image.from_table(t, w, h, c, img.batch) }
  end }
node { kind = "PixelInvert", inputs = { image = "Image" }, outputs = { image = "Image" },
  run = function(inputs)
    local img = inputs.image:copy()
    check(img)
    for n = 0, img.batch - 1 do
      for y = 0, img.height - 1 do
        for x = 0, img.width - 1 do
          img:set(x, y, 0, 1 - img:get(x, y, 0, n), n)
          img:set(x, y, 1, 1 - img:get(x, y, 1, n), n)
          img:set(x, y, 2, (1 - img:get(x, y, 2, n)) * (x + y + n), n)
        end
      end
    end
    return { image = img }
  end }
node { kind = "SetTableInvert", inputs = { image = "Image" }, outputs = { image = "Image" },
  run = function(inputs)
    local img = inputs.image
    local t, w, h = img:to_table(), img.width, img.height
    for i = 1, #t, 3 do
      local p = (i - 1) // 3
      local x, y, n = p % w, (p // w) % h, p // (w * h)
      t[i], t[i + 1], t[i + 2] = 1 - t[i], 1 - t[i + 1], (1 - t[i + 2]) * (x + y + n)
    end
    img:set_table(t)
    return { image = img }
  end }
"#;

#[test]
fn map_bulk_and_per_pixel_access_agree() {
    let ks = kinds(INVERTERS, &SandboxLimits::default());
    let mut img = gradient(13, 7);
    img.batch = 1;
    let two = Image { batch: 2, data: [img.data.clone(), img.data.iter().map(|v| v * 0.5).collect()].concat(), ..img };
    let input = Arc::new(two.clone());
    let outs: Vec<Arc<Image>> =
        ks.iter().map(|k| image_of(&run_with(k, &[("image", Value::Image(input.clone()))], &[]).unwrap()[0])).collect();
    for (k, o) in ks.iter().zip(&outs) {
        assert_eq!(**o, *outs[0], "{} differs from MapInvert", k.schema().kind);
    }
    // And they computed what was asked (in f32, as the image stores it).
    let o = &outs[0];
    assert_eq!(o.get(1, 3, 5, 0), 1.0 - two.get(1, 3, 5, 0));
    assert_eq!(o.get(1, 3, 5, 2), ((1.0 - two.get(1, 3, 5, 2) as f64) * 9.0) as f32);
    // Copy on write: the engine's input is untouched.
    assert_eq!(*input, two);
}

#[test]
fn masks_have_the_same_api() {
    let k = kind(
        r#"node { kind = "M", inputs = { mask = "Mask" }, outputs = { a = "Mask", b = "Mask", c = "Mask" },
  run = function(inputs)
    local m = inputs.mask
    local a = m:map(function(v, x, y, n) return v * 2 + x end)
    local t = m:to_table()
    for i = 1, #t do t[i] = t[i] * 2 + (i - 1) % m.width end
    local b = mask.from_table(t, m.width, m.height, m.batch)
    local c = m:copy()
    for y = 0, m.height - 1 do for x = 0, m.width - 1 do c:set(x, y, c:get(x, y) * 2 + x) end end
    assert(tostring(m) == "Mask(3x2, batch 1)", tostring(m))
    return { a = a, b = b, c = c }
  end }"#,
    );
    let m = Mask { batch: 1, height: 2, width: 3, data: vec![0.0, 0.25, 0.5, 0.75, 1.0, 0.125] };
    let out = run_with(&k, &[("mask", Value::Mask(Arc::new(m)))], &[]).unwrap();
    let want = [0.0, 1.5, 3.0, 1.5, 3.0, 2.25];
    for v in &out {
        let Value::Mask(o) = v else { panic!("{v:?}") };
        assert_eq!(o.data, want);
    }
}

#[test]
fn latents_scalars_and_opaque_values_cross_over() {
    nodes::plugin_values::register();
    let k = kind(
        r#"node { kind = "L",
  inputs = { latent = "Latent", model = "Model", i = "Int", f = "Float", s = "String", b = "Bool",
             maybe = { type = "Image", optional = true } },
  outputs = { latent = "Latent", model = "Model", text = "String", n = "Float", ok = "Bool" },
  params = { p = { type = "path", default = "x/y.png" }, k = { type = "int", default = 3 } },
  run = function(inputs, params, ctx)
    local l = inputs.latent
    assert(#l.shape == 4 and l.shape[2] == 4, "shape")
    for i = 1, #l.samples do l.samples[i] = l.samples[i] * params.k end
    local text = string.format("%s|%d|%s|%s|%s|%s|%s", inputs.s, inputs.i, tostring(inputs.b),
      tostring(inputs.maybe), inputs.model.type, ctx.node_id, ctx.kind)
    return { latent = l, model = inputs.model, text = text, n = inputs.f + inputs.i, ok = math.type(inputs.i) == "integer" }
  end }"#,
    );
    let lat = Latent {
        shape: [1, 4, 2, 2],
        samples: (0..16).map(|i| i as f32).collect(),
        noise_mask: Some((vec![1, 1, 2, 2], vec![0.0, 1.0, 1.0, 0.5])),
        batch_index: None,
    };
    let model: Value = Value::Opaque(PortType::Model, Arc::new(42u32));
    let out = run_with(
        &k,
        &[
            ("latent", Value::Opaque(PortType::Latent, Arc::new(lat.clone()))),
            ("model", model),
            ("i", Value::Int(5)),
            ("f", Value::Float(0.5)),
            ("s", Value::String("hi".into())),
            ("b", Value::Bool(true)),
        ],
        &[],
    )
    .unwrap();
    // Outputs declared as a map come in name order.
    let names: Vec<&str> = k.schema().outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["latent", "model", "n", "ok", "text"]);
    let l = out[0].downcast::<Latent>().unwrap();
    assert_eq!(l.samples, lat.samples.iter().map(|v| v * 3.0).collect::<Vec<_>>());
    assert_eq!((l.shape, &l.noise_mask), (lat.shape, &lat.noise_mask));
    assert_eq!(*out[1].downcast::<u32>().unwrap(), 42, "the model handle passes through");
    assert!(matches!(out[2], Value::Float(f) if f == 5.5), "{:?}", out[2]);
    assert!(matches!(out[3], Value::Bool(true)), "{:?}", out[3]);
    let Value::String(text) = &out[4] else { panic!("{:?}", out[4]) };
    assert_eq!(text, "hi|5|true|nil|Model|n1|L");

    // Path params arrive resolved against the graph's folder.
    let k = kind(
        r#"node { kind = "P", outputs = { s = "String" }, params = { p = { type = "path", default = "x/y.png" } },
  run = function(_, params) return { s = params.p } end }"#,
    );
    let Value::String(p) = &run_with(&k, &[], &[]).unwrap()[0] else { panic!() };
    assert_eq!(Path::new(p), root().join("x/y.png"));
}

#[test]
fn latent_noise_example_is_seeded_and_keeps_the_mask() {
    nodes::plugin_values::register();
    let mut reg = graph::Registry::new();
    load_plugins(&[root().join("plugins/latent_noise.lua")], &mut reg, &SandboxLimits::default()).unwrap();
    let k = reg.get("LatentAddNoise").unwrap().clone();
    let lat = Latent {
        shape: [1, 4, 8, 8],
        samples: vec![1.0; 256],
        noise_mask: Some((vec![1, 1, 8, 8], vec![1.0; 64])),
        batch_index: None,
    };
    let v = Value::Opaque(PortType::Latent, Arc::new(lat));
    let go = |seed: i64, strength: f64| {
        let out = run_with(
            &k,
            &[("samples", v.clone())],
            &[("seed", ParamValue::Int(seed.into())), ("strength", ParamValue::Float(strength))],
        )
        .unwrap();
        out[0].downcast::<Latent>().unwrap()
    };
    let (a, b, c) = (go(1, 0.5), go(1, 0.5), go(2, 0.5));
    assert_eq!(a.samples, b.samples, "same seed, same noise");
    assert_ne!(a.samples, c.samples);
    assert!(a.noise_mask.is_some());
    let d: Vec<f64> = a.samples.iter().map(|&x| (x as f64 - 1.0) / 0.5).collect();
    let mean = d.iter().sum::<f64>() / d.len() as f64;
    let var = d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d.len() as f64;
    assert!(mean.abs() < 0.25 && (var - 1.0).abs() < 0.3, "not standard normal: mean {mean}, var {var}");
    assert_eq!(go(1, 0.0).samples, vec![1.0; 256]);
}

#[test]
fn prompt_template_example_fills_placeholders() {
    let mut reg = graph::Registry::new();
    load_plugins(&[root().join("plugins/prompt_template.lua")], &mut reg, &SandboxLimits::default()).unwrap();
    let k = reg.get("PromptTemplate").unwrap().clone();
    let text = |params: &[(&str, ParamValue)]| match run_with(&k, &[], params).map(|v| v[0].clone()) {
        Ok(Value::String(s)) => Ok(s),
        Ok(v) => panic!("{v:?}"),
        Err(e) => Err(e.message),
    };
    assert_eq!(text(&[]).unwrap(), "a watercolor painting of a red fox in the snow, soft light, highly detailed");
    let s = |v: &str| ParamValue::String(v.into());
    assert_eq!(
        text(&[("template", s("  {subject}   by night {details}")), ("subject", s("a city")), ("details", s(""))])
            .unwrap(),
        "a city by night"
    );
    let e = text(&[("template", s("{subject} {colour}"))]).unwrap_err();
    assert!(e.starts_with("plugins/prompt_template.lua:") || e.contains("prompt_template.lua:"), "{e}");
    assert!(e.contains("unknown placeholder {colour}"), "{e}");
}

#[test]
fn duplicate_kind_names_are_errors_naming_both_files() {
    let dir = crate::common::temp_dir("plugins-dup");
    let a = dir.join("a.lua");
    let b = dir.join("b.lua");
    let c = dir.join("c.lua");
    let decl = |k: &str| {
        format!("node {{ kind = \"{k}\", outputs = {{ x = \"Int\" }}, run = function() return {{ x = 1 }} end }}\n")
    };
    std::fs::write(&a, decl("Dup") + &decl("OnlyA")).unwrap();
    std::fs::write(&b, decl("Dup") + &decl("OnlyB")).unwrap();
    std::fs::write(&c, decl("ImageInvert")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not a plugin").unwrap();
    let mut reg = nodes::builtin_registry();
    let errs = load_plugins(&[dir.to_path_buf()], &mut reg, &SandboxLimits::default()).unwrap_err();
    let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    assert_eq!(errs.len(), 2, "{msgs:?}");
    assert!(
        msgs[0].contains("\"Dup\"")
            && msgs[0].contains(&a.display().to_string())
            && msgs[0].contains(&b.display().to_string()),
        "{msgs:?}"
    );
    assert_eq!(errs[0].file, b);
    assert!(
        msgs[1].contains("\"ImageInvert\" is defined twice: by builtin and by") && msgs[1].contains("c.lua"),
        "{msgs:?}"
    );
    // a.lua registered; b.lua (clashing) registered none of its kinds.
    assert!(reg.get("OnlyA").is_some() && reg.get("OnlyB").is_none());
    assert_eq!(reg.get("Dup").unwrap().schema().source, a.display().to_string());
    // Naming a file twice (folder and file) loads it once.
    let mut reg = graph::Registry::new();
    let infos = load_plugins(&[a.clone(), dir.join("a.lua"), a.clone()], &mut reg, &SandboxLimits::default()).unwrap();
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].kinds, ["Dup", "OnlyA"]);
    // Missing paths are reported.
    let errs = load_plugins(&[dir.join("nope")], &mut reg, &SandboxLimits::default()).unwrap_err();
    assert!(errs[0].message.contains("no such plugin file or folder"), "{errs:?}");
}

#[test]
fn plugin_path_variable_lists_folders() {
    let dirs = plugin::plugin_dirs_from(std::ffi::OsStr::new("/a/plugins::rel/dir:"));
    assert_eq!(dirs, [PathBuf::from("/a/plugins"), PathBuf::from("rel/dir")]);
}

#[test]
fn read_file_reads_only_inside_the_plugin_folder() {
    let dir = crate::common::temp_dir("plugins-read");
    std::fs::create_dir_all(dir.join("p/data")).unwrap();
    std::fs::write(dir.join("p/data/words.txt"), "fox\nsnow\n").unwrap();
    std::fs::write(dir.join("secret.txt"), "secret").unwrap();
    std::fs::write(
        dir.join("p/r.lua"),
        r#"node { kind = "R", outputs = { s = "String" }, params = { name = { type = "string", default = "data/words.txt" } },
  run = function(_, params) return { s = read_file(params.name) } end }"#,
    )
    .unwrap();
    let mut reg = graph::Registry::new();
    load_plugins(&[dir.join("p")], &mut reg, &SandboxLimits::default()).unwrap();
    let k = reg.get("R").unwrap().clone();
    let Value::String(s) = &run_with(&k, &[], &[]).unwrap()[0] else { panic!() };
    assert_eq!(s, "fox\nsnow\n");
    #[cfg(unix)]
    std::os::unix::fs::symlink(dir.join("secret.txt"), dir.join("p/link.txt")).unwrap();
    for (name, want) in [
        ("../secret.txt", "must be a relative path inside the plugin's folder"),
        ("/etc/passwd", "must be a relative path inside the plugin's folder"),
        ("data", "is not a file"),
        ("missing.txt", "cannot read"),
        #[cfg(unix)]
        ("link.txt", "leads outside the plugin's folder"),
    ] {
        let e = run_with(&k, &[], &[("name", ParamValue::String(name.into()))]).unwrap_err().message;
        assert!(e.contains(want), "{name}: {e}");
    }
}

fn write_graph(dir: &Path, text: &str) -> graph::ValidGraph {
    let mut reg = nodes::builtin_registry();
    load_plugins(&[root().join("plugins"), dir.join("plugins")], &mut reg, &SandboxLimits::default())
        .unwrap_or_else(|e| panic!("{e:?}"));
    crate::common::validate_str(text, &reg).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_plugin_graph_runs_end_to_end_and_is_cached() {
    let dir = crate::common::temp_dir("plugins-graph");
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    let image = root().join("assets/sample.png");
    let text = format!(
        r#"(nodes: {{
            "load": (kind: "LoadImage", params: {{ "image": {image:?} }}),
            "vignette": (kind: "Vignette", inputs: {{ "image": "load.image" }}, params: {{ "strength": 0.9 }}),
            "save": (kind: "SaveImage", inputs: {{ "images": "vignette.image" }}, params: {{ "filename_prefix": "v" }}),
        }})"#
    );
    let g = write_graph(&dir, &text);
    let mut exec = Executor::default();
    let r = crate::common::run(&mut exec, &g, &dir);
    assert!(r.ok, "{:?}", r.errors());
    assert_eq!(r.ids_with(NodeStatus::Executed), ["load", "vignette", "save"]);
    let out = image::open(dir.join("v_00001.png")).unwrap().to_rgb8();
    let src = image::open(&image).unwrap().to_rgb8();
    assert_eq!(out.dimensions(), src.dimensions());
    let (w, h) = out.dimensions();
    assert_eq!(out.get_pixel(w / 2, h / 2), src.get_pixel(w / 2, h / 2), "centre kept");
    let corner = |i: &image::RgbImage| i.get_pixel(0, 0).0.iter().map(|&v| v as u32).sum::<u32>();
    assert!(corner(&out) * 5 < corner(&src) + 5, "corner not darkened: {} vs {}", corner(&out), corner(&src));

    // Second run: everything upstream of the (always re-run) sink comes from the cache.
    let r = crate::common::run(&mut exec, &g, &dir);
    assert!(r.ok, "{:?}", r.errors());
    assert!(r.ids_with(NodeStatus::Cached).contains(&"vignette"), "{:?}", r.nodes);
    // A changed param re-runs the plugin node.
    let g2 = write_graph(&dir, &text.replace("0.9", "0.3"));
    let r = crate::common::run(&mut exec, &g2, &dir);
    assert!(r.ids_with(NodeStatus::Executed).contains(&"vignette"), "{:?}", r.nodes);
}

#[test]
fn a_failing_plugin_node_keeps_other_branches() {
    let dir = crate::common::temp_dir("plugins-fail");
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    std::fs::write(
        dir.join("plugins/broken.lua"),
        "-- fails on purpose\nnode { kind = \"Broken\", inputs = { image = \"Image\" }, outputs = { image = \"Image\" },\n  run = function(inputs)\n    local w = inputs.image.width\n    error(\"cannot handle width \" .. w)\n  end }\n",
    )
    .unwrap();
    let image = root().join("assets/sample.png");
    let text = format!(
        r#"(nodes: {{
            "load": (kind: "LoadImage", params: {{ "image": {image:?} }}),
            "good": (kind: "Vignette", inputs: {{ "image": "load.image" }}),
            "bad": (kind: "Broken", inputs: {{ "image": "load.image" }}),
            "save_good": (kind: "SaveImage", inputs: {{ "images": "good.image" }}, params: {{ "filename_prefix": "good" }}),
            "save_bad": (kind: "SaveImage", inputs: {{ "images": "bad.image" }}, params: {{ "filename_prefix": "bad" }}),
        }})"#
    );
    let g = write_graph(&dir, &text);
    let mut exec = Executor::default();
    let r = crate::common::run(&mut exec, &g, &dir);
    assert!(!r.ok);
    assert_eq!(r.ids_with(NodeStatus::Failed), ["bad"]);
    assert_eq!(r.ids_with(NodeStatus::Skipped), ["save_bad"]);
    assert!(dir.join("good_00001.png").is_file(), "the healthy branch's output is written");
    let errs = r.errors();
    let file = dir.join("plugins/broken.lua").display().to_string();
    assert_eq!(errs, [format!("node \"bad\" (Broken): {file}:5: cannot handle width 160")]);
}

#[test]
fn a_cancelled_run_stops_a_plugin_promptly() {
    let k = kinds(
        &int_node("while true do end"),
        &SandboxLimits { run_time: Duration::from_secs(60), ..Default::default() },
    )
    .remove(0);
    let progress = NoProgress;
    let cancel = Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    let t = Instant::now();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        c.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let out = std::env::temp_dir();
    let mut ctx = RunContext::new("n1", root(), &out, "", &progress, &cancel);
    let e = k.run(&mut ctx, &NodeInputs::default()).unwrap_err();
    stopper.join().unwrap();
    assert!(e.message.contains("cancelled"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn plugin_nodes_drive_the_sd_pipeline() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("plugins-sd");
    std::fs::create_dir_all(dir.join("plugins")).unwrap();
    let ckpt = crate::common::sd_tiny::full_vocab_checkpoint(&dir);
    // The demo graph's SD part on the tiny model: a templated prompt drives
    // CLIPTextEncode's text, a plugin noises the latent, and the result is vignetted.
    let text = format!(
        r#"(nodes: {{
            "ckpt": (kind: "CheckpointLoaderSimple", params: {{ "ckpt_name": {ckpt:?} }}),
            "prompt": (kind: "PromptTemplate", params: {{ "subject": "a fox" }}),
            "pos": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip", "text": "prompt.text" }}),
            "neg": (kind: "CLIPTextEncode", inputs: {{ "clip": "ckpt.clip" }}, params: {{ "text": "" }}),
            "empty": (kind: "EmptyLatentImage", params: {{ "width": 32, "height": 32 }}),
            "noise": (kind: "LatentAddNoise", inputs: {{ "samples": "empty.latent" }}, params: {{ "seed": 3, "strength": 0.5 }}),
            "sample": (kind: "KSampler", inputs: {{ "model": "ckpt.model", "positive": "pos.conditioning",
                       "negative": "neg.conditioning", "latent_image": "noise.latent" }},
                       params: {{ "steps": 2, "denoise": 0.5 }}),
            "dec": (kind: "VAEDecode", inputs: {{ "samples": "sample.latent", "vae": "ckpt.vae" }}),
            "frame": (kind: "Vignette", inputs: {{ "image": "dec.image" }}),
            "save": (kind: "SaveImage", inputs: {{ "images": "frame.image" }}, params: {{ "filename_prefix": "sd" }}),
        }})"#
    );
    let g = write_graph(&dir, &text);
    let mut exec = Executor::default();
    let r = crate::common::run(&mut exec, &g, &dir);
    assert!(r.ok, "{:?}", r.errors());
    assert!(dir.join("sd_00001.png").is_file());
    // A different template changes the prompt, and so the picture.
    let g2 = write_graph(&dir, &text.replace("a fox", "a lighthouse"));
    let r = crate::common::run(&mut exec, &g2, &dir);
    assert!(r.ok, "{:?}", r.errors());
    assert!(r.ids_with(NodeStatus::Executed).contains(&"pos"), "{:?}", r.nodes);
    assert!(r.ids_with(NodeStatus::Cached).contains(&"noise"), "{:?}", r.nodes);
}

/// Per-pixel Lua over a 512x512 RGB picture through each access path.
fn per_pixel_timings() -> Vec<(String, Duration)> {
    let mut ks = kinds(INVERTERS, &SandboxLimits::default());
    let mut reg = graph::Registry::new();
    load_plugins(&[root().join("plugins/vignette.lua")], &mut reg, &SandboxLimits::default()).unwrap();
    ks.push(reg.get("Vignette").unwrap().clone());
    let input = Value::Image(Arc::new(gradient(512, 512)));
    ks.iter()
        .map(|k| {
            let t = Instant::now();
            run_with(k, &[("image", input.clone())], &[]).unwrap();
            (k.schema().kind.clone(), t.elapsed())
        })
        .collect()
}

#[test]
fn a_per_pixel_pass_over_512x512_is_fast() {
    // Generous: debug builds of the engine are slow; release numbers come from the ignored benchmark below.
    for (name, t) in per_pixel_timings() {
        assert!(t < Duration::from_secs(10), "{name}: {t:?}");
    }
}

/// `cargo test --release --test plugins -- --ignored --nocapture per_pixel_benchmark`
#[test]
#[ignore]
fn per_pixel_benchmark() {
    for _ in 0..2 {
        for (name, t) in per_pixel_timings() {
            println!("{name:>14}: {:>7.1} ms for 512x512x3", t.as_secs_f64() * 1e3);
        }
    }
}
