//! One test per kind of mistake in a graph file, asserting the whole
//! rendered error text: file:line:col, node, port or param, what was expected.

use crate::common::errors_of;
use nodes::builtin_registry;

fn errors(text: &str) -> String {
    errors_of(text, &builtin_registry())
}

#[test]
fn malformed_ron_names_line_and_column() {
    let text = "(nodes: {\n    \"load\": (kind: \"LoadImage\" params: {}),\n})";
    assert_eq!(errors(text), "test.ron:2:32: malformed RON: expected ',' or ')' after a struct field, found 'p'");
}

#[test]
fn unknown_kind_suggests_the_nearest_name() {
    let text = r#"(nodes: {
    "load": (kind: "LoadImag", params: { "image": "x.png" }),
})"#;
    assert_eq!(errors(text), r#"test.ron:2:20: node "load": unknown node kind "LoadImag" (did you mean "LoadImage"?)"#);
}

#[test]
fn unknown_input_port_is_named() {
    let text = r#"(nodes: {
    "load": (kind: "LoadImage", params: { "image": "x.png" }),
    "save": (kind: "SaveImage", inputs: { "image": "load.image" }),
})"#;
    assert_eq!(
        errors(text),
        [
            r#"test.ron:3:13: node "save", input "images": missing required input "images" (Image)"#,
            r#"test.ron:3:43: node "save", input "image": SaveImage has no input "image" (did you mean "images"?)"#,
        ]
        .join("\n")
    );
}

#[test]
fn unknown_output_port_lists_the_outputs() {
    let text = r#"(nodes: {
    "load": (kind: "LoadImage", params: { "image": "x.png" }),
    "save": (kind: "SaveImage", inputs: { "images": "load.picture" }),
})"#;
    assert_eq!(
        errors(text),
        r#"test.ron:3:53: node "save", input "images": node "load" (LoadImage) has no output "picture"; its outputs are "image", "mask""#
    );
}

#[test]
fn link_to_a_missing_node_suggests_an_existing_one() {
    let text = r#"(nodes: {
    "load": (kind: "LoadImage", params: { "image": "x.png" }),
    "save": (kind: "SaveImage", inputs: { "images": "lod.image" }),
})"#;
    assert_eq!(
        errors(text),
        r#"test.ron:3:53: node "save", input "images": no node "lod" in the graph (linked as "lod.image") (did you mean "load"?)"#
    );
}

#[test]
fn type_mismatch_names_both_types() {
    let text = r#"(nodes: {
    "load": (kind: "LoadImage", params: { "image": "x.png" }),
    "save": (kind: "SaveImage", inputs: { "images": "load.mask" }),
})"#;
    assert_eq!(
        errors(text),
        r#"test.ron:3:53: node "save", input "images": type mismatch: load.mask is Mask, but input "images" takes Image"#
    );
}

#[test]
fn cycle_names_every_node_in_it() {
    let text = r#"(nodes: {
    "a": (kind: "ImageInvert", inputs: { "image": "c.image" }),
    "b": (kind: "ImageInvert", inputs: { "image": "a.image" }),
    "c": (kind: "ImageInvert", inputs: { "image": "b.image" }),
    "save": (kind: "SaveImage", inputs: { "images": "c.image" }),
})"#;
    assert_eq!(errors(text), r#"test.ron:2:10: node "a": cycle: "a" -> "b" -> "c" -> "a""#);
}

#[test]
fn a_node_feeding_itself_is_a_cycle() {
    let text = r#"(nodes: {
    "a": (kind: "ImageInvert", inputs: { "image": "a.image" }),
    "save": (kind: "SaveImage", inputs: { "images": "a.image" }),
})"#;
    assert_eq!(errors(text), r#"test.ron:2:10: node "a": cycle: "a" -> "a""#);
}

#[test]
fn missing_required_input_names_port_and_type() {
    let text = r#"(nodes: {
    "save": (kind: "SaveImage"),
})"#;
    assert_eq!(errors(text), r#"test.ron:2:13: node "save", input "images": missing required input "images" (Image)"#);
}

#[test]
fn missing_required_param_says_what_is_expected() {
    let text = r#"(nodes: {
    "load": (kind: "LoadImage"),
    "save": (kind: "SaveImage", inputs: { "images": "load.image" }),
})"#;
    assert_eq!(
        errors(text),
        r#"test.ron:2:13: node "load", param "image": missing required param "image" (a file path string)"#
    );
}

#[test]
fn unknown_param_suggests_the_nearest() {
    let text = r#"(nodes: {
    "load": (kind: "LoadImage", params: { "imgae": "x.png" }),
    "save": (kind: "SaveImage", inputs: { "images": "load.image" }),
})"#;
    let e = errors(text);
    assert!(
        e.contains(
            r#"test.ron:2:43: node "load", param "imgae": LoadImage has no param "imgae" (did you mean "image"?)"#
        ),
        "{e}"
    );
}

#[test]
fn a_param_given_where_an_input_belongs_says_how_to_connect_it() {
    let text = r#"(nodes: {
    "load": (kind: "LoadImage", params: { "image": "x.png" }),
    "save": (kind: "SaveImage", inputs: { "images": "load.image" }, params: { "images": "load.image" }),
})"#;
    assert_eq!(
        errors(text),
        r#"test.ron:3:79: node "save", param "images": "images" is an input port, not a param: connect it in `inputs` as "node.output""#
    );
}

#[test]
fn wrong_param_type_names_expected_and_found() {
    let text = r#"(nodes: {
    "load": (kind: "LoadImage", params: { "image": "x.png" }),
    "scale": (kind: "ImageScale", inputs: { "image": "load.image" }, params: { "width": "wide" }),
    "save": (kind: "SaveImage", inputs: { "images": "scale.image" }),
})"#;
    assert_eq!(
        errors(text),
        r#"test.ron:3:89: node "scale", param "width": expected an integer in 0..=16384, found the string "wide""#
    );
}

#[test]
fn value_out_of_range_gives_the_range() {
    let text = r#"(nodes: {
    "load": (kind: "LoadImage", params: { "image": "x.png" }),
    "scale": (kind: "ImageScaleBy", inputs: { "image": "load.image" }, params: { "scale_by": 20.0 }),
    "save": (kind: "SaveImage", inputs: { "images": "scale.image" }),
})"#;
    assert_eq!(errors(text), r#"test.ron:3:94: node "scale", param "scale_by": value 20 is out of range 0.01..=8"#);
}

#[test]
fn enum_value_not_allowed_lists_the_choices() {
    let text = r#"(nodes: {
    "load": (kind: "LoadImage", params: { "image": "x.png" }),
    "scale": (kind: "ImageScale", inputs: { "image": "load.image" }, params: { "upscale_method": "lanczoss" }),
    "save": (kind: "SaveImage", inputs: { "images": "scale.image" }),
})"#;
    assert_eq!(
        errors(text),
        r#"test.ron:3:98: node "scale", param "upscale_method": "lanczoss" is not allowed; expected one of "nearest-exact", "bilinear", "area", "bicubic", "lanczos" (did you mean "lanczos"?)"#
    );
}

#[test]
fn every_problem_is_reported_at_once_in_file_order() {
    let text = r#"(nodes: {
    "load": (kind: "LoadImag", params: { "image": "x.png" }),
    "scale": (kind: "ImageScale", inputs: { "image": "load.image" }, params: { "width": -1, "crop": "top" }),
    "save": (kind: "SaveImage", inputs: { "images": "scale.mask" }),
})"#;
    let e = errors(text);
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 4, "{e}");
    assert!(lines[0].starts_with("test.ron:2:20: node \"load\": unknown node kind"), "{e}");
    assert!(lines[1].starts_with("test.ron:3:89: node \"scale\", param \"width\": value -1 is out of range"), "{e}");
    assert!(lines[2].starts_with("test.ron:3:101: node \"scale\", param \"crop\": \"top\" is not allowed"), "{e}");
    assert!(
        lines[3].starts_with(
            "test.ron:4:53: node \"save\", input \"images\": node \"scale\" (ImageScale) has no output \"mask\""
        ),
        "{e}"
    );
}

#[test]
fn duplicate_node_ids_are_refused() {
    let text = r#"(nodes: {
    "load": (kind: "LoadImage", params: { "image": "x.png" }),
    "load": (kind: "LoadImage", params: { "image": "y.png" }),
})"#;
    assert_eq!(errors(text), r#"test.ron:3:5: node id "load" is used twice (first at 2:5)"#);
}

#[test]
fn a_graph_without_output_node_would_do_nothing() {
    let text = r#"(nodes: { "load": (kind: "LoadImage", params: { "image": "x.png" }) })"#;
    assert_eq!(
        errors(text),
        "test.ron: the graph has no output node (such as SaveImage), so running it would do nothing"
    );
}

#[test]
fn wrong_top_level_shape_says_what_a_graph_looks_like() {
    assert_eq!(
        errors(r#"{ "load": (kind: "LoadImage") }"#),
        "test.ron:1:1: expected the graph as `(nodes: { ... })`, found a map; wrap it in `(nodes: ...)`"
    );
    assert_eq!(errors("[1, 2]"), "test.ron:1:1: expected the graph as `(nodes: { ... })`, found a list");
    assert_eq!(
        errors("(nodez: {})"),
        "test.ron:1:2: unknown field `nodez`; the graph has only `nodes`\ntest.ron:1:1: missing field `nodes`"
    );
}

#[test]
fn unknown_node_field_and_non_string_link_are_reported() {
    let text = r#"(nodes: {
    "save": (kind: "SaveImage", input: {}, inputs: { "images": 3 }),
})"#;
    assert_eq!(
        errors(text),
        [
            r#"test.ron:2:33: node "save": unknown field `input`; a node has `kind`, `inputs` and `params`"#,
            r#"test.ron:2:64: node "save", input "images": expected a link "node.output", found an integer"#,
        ]
        .join("\n")
    );
}

#[test]
fn deeply_nested_file_is_an_error_not_a_crash() {
    let text = format!(
        "(nodes: {{ \"a\": (kind: \"X\", params: {{ \"p\": {}{} }}) }})",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let e = errors(&text);
    assert!(e.contains("malformed RON: nesting deeper than 64 levels"), "{e}");
}

#[test]
fn binary_file_is_refused_as_not_text() {
    let png = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/sample.png")).unwrap();
    let e = graph::parse_graph("sample.png", &png).unwrap_err().to_string();
    assert!(e.starts_with("sample.png:1:1: not a text file"), "{e}");
    let e = graph::parse_graph("nul.ron", b"(nodes: {\0})").unwrap_err().to_string();
    assert_eq!(e, "nul.ron:1:10: not a text file: contains NUL bytes");
}

#[test]
fn huge_file_is_refused_by_size() {
    let big = vec![b' '; 17 << 20];
    let e = graph::parse_graph("big.ron", &big).unwrap_err().to_string();
    assert_eq!(e, "big.ron: file is 17825792 bytes, larger than the limit of 16777216 bytes for a graph");
}

#[test]
fn set_override_errors_point_at_the_command_line() {
    use graph::SetOverride;
    let reg = builtin_registry();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/graphs/resize.ron")).unwrap();
    let mut g = graph::parse_graph("resize.ron", text.as_bytes()).unwrap();
    let sets = [SetOverride::parse("scale.width=99999").unwrap(), SetOverride::parse("scale.colour=red").unwrap()];
    g.apply_overrides(&sets).unwrap();
    let e = graph::validate(g, &reg).err().unwrap().to_string();
    assert_eq!(
        e,
        [
            r#"--set: node "scale", param "width": value 99999 is out of range 0..=16384"#,
            r#"--set: node "scale", param "colour": ImageScale has no param "colour"; its params are "upscale_method", "width", "height", "crop""#,
        ]
        .join("\n")
    );
    let mut g = graph::parse_graph("resize.ron", text.as_bytes()).unwrap();
    let e = g.apply_overrides(&[SetOverride::parse("scal.width=3").unwrap()]).unwrap_err().to_string();
    assert_eq!(e, r#"--set: --set scal.width: no node "scal" in the graph (did you mean "scale"?)"#);
    assert!(SetOverride::parse("nodot=3").is_err());
    assert!(SetOverride::parse("a.b").is_err());
}

#[test]
fn set_values_parse_as_ron_literals_or_plain_strings() {
    use graph::ParamValue;
    use graph::SetOverride;
    let v = |s: &str| SetOverride::parse(s).unwrap().value;
    assert_eq!(v("n.seed=7"), ParamValue::Int(7));
    assert_eq!(v("n.cfg=7.5"), ParamValue::Float(7.5));
    assert_eq!(v("n.flag=true"), ParamValue::Bool(true));
    assert_eq!(v("n.text=\"a cat\""), ParamValue::String("a cat".into()));
    assert_eq!(v("n.text=a cat"), ParamValue::String("a cat".into()));
    assert_eq!(v("n.text=lanczos"), ParamValue::String("lanczos".into()));
    assert_eq!(v("n.text=x=y"), ParamValue::String("x=y".into()));
}
