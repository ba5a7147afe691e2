//! `sdgraph sweep`: shards from `--shard`, Kubernetes' and Slurm's variables together render every row exactly
//! once; a shard killed mid-row and rerun renders only its missing rows and leaves no partial file; two processes
//! given the same shard at once render and record each row once; failed rows are recorded and do not stop the
//! shard; bad params files are errors naming the row and column. All on the tiny checkpoint, 64x48, 1 step.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

fn sweep(graph: &Path, params: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = crate::common::sdgraph_command();
    c.args(["sweep", graph.to_str().unwrap(), "--params", params.to_str().unwrap()]);
    c.args(["--out-dir", out.to_str().unwrap()]).args(extra);
    // Tests set the scheduler's variables themselves.
    for v in ["JOB_COMPLETION_INDEX", "SDGRAPH_SWEEP_SHARDS", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"] {
        c.env_remove(v);
    }
    c.env_remove("SLURM_ARRAY_TASK_MIN").env_remove("SLURM_ARRAY_TASK_STEP");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn finished(child: Child) -> Output {
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    o
}

/// The manifest's records.
fn manifest(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().into_string().unwrap()).collect();
    v.sort();
    v
}

/// Checks a record's files: in place, hashed as recorded, decodable pictures, and alone in their row folder
/// (beside the record).
fn check_files(out: &Path, rec: &serde_json::Value) -> PathBuf {
    let row = rec["row"].as_u64().unwrap() as usize;
    let files = rec["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{rec}");
    let path = out.join(files[0]["path"].as_str().unwrap());
    assert!(path.starts_with(out.join(format!("row-{row:06}"))), "{}", path.display());
    let sha = graph::exec::provenance::sha256_file(&path).unwrap();
    assert_eq!(files[0]["sha256"].as_str().unwrap(), sha);
    assert_eq!(image::open(&path).unwrap().to_rgb8().dimensions(), (16, 12), "the tiny VAE upscales 2x");
    assert_eq!(names(path.parent().unwrap()), ["sweep-row.json", "x_00001.png"]);
    path
}

/// Nothing left of a row being rendered.
fn no_partials(out: &Path) {
    let partial: Vec<String> = names(out).into_iter().filter(|n| n.contains(".partial-")).collect();
    assert!(partial.is_empty(), "{partial:?}");
}

/// The tiny txt2img graph, saving as `x`.
fn graph(dir: &Path) -> PathBuf {
    let g = crate::cli_preview::txt2img(dir, 1);
    let text = std::fs::read_to_string(&g).unwrap().replace(
        r#""save": (kind: "SaveImage", inputs: { "images": "dec.image" }),"#,
        r#""save": (kind: "SaveImage", inputs: { "images": "dec.image" }, params: { "filename_prefix": "x" }),"#,
    );
    assert!(text.contains("\"x\""));
    std::fs::write(&g, text).unwrap();
    g
}

fn status(graph: &Path, params: &Path, out: &Path) -> (Option<i32>, serde_json::Value) {
    let o = sweep(graph, params, out, &["--status", "--json"]).output().unwrap();
    (o.status.code(), serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o.stderr))))
}

#[test]
fn three_shards_from_three_schedulers_render_a_12_row_sweep_exactly_once() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("sweep-shards");
    let g = graph(&dir);
    let params = dir.join("p.json");
    std::fs::write(&params, r#"{"product": {"sample.seed": [1, 2, 3, 4], "pos.text": ["a fox", "a cat", "a dog"]}}"#)
        .unwrap();
    let out = dir.join("out");
    let spawn = |c: &mut Command| c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let children = [
        spawn(&mut sweep(&g, &params, &out, &["--shard", "0/3"])),
        spawn(sweep(&g, &params, &out, &[]).env("JOB_COMPLETION_INDEX", "1").env("SDGRAPH_SWEEP_SHARDS", "3")),
        spawn(
            sweep(&g, &params, &out, &[])
                .env("SLURM_ARRAY_TASK_ID", "12")
                .env("SLURM_ARRAY_TASK_COUNT", "3")
                .env("SLURM_ARRAY_TASK_MIN", "10"),
        ),
    ];
    let mut rows = Vec::new();
    let mut shas = BTreeSet::new();
    for (shard, child) in children.into_iter().enumerate() {
        let o = finished(child);
        assert!(text(&o.stderr).contains(&format!("shard {shard}/3")), "{}", text(&o.stderr));
        let recs = manifest(&out.join(format!("manifest-{shard}-of-3.jsonl")));
        assert_eq!(recs.len(), 4, "{recs:?}");
        for rec in recs {
            let row = rec["row"].as_u64().unwrap();
            assert_eq!(row % 3, shard as u64);
            assert_eq!(rec["ok"], true);
            // Row r of the product: seed [r / 3], prompt [r % 3]; the picture's embedded graph has them.
            let (seed, prompt) = (row / 3 + 1, ["a fox", "a cat", "a dog"][row as usize % 3]);
            assert_eq!(rec["params"], serde_json::json!({ "sample.seed": seed, "pos.text": prompt }));
            assert!(rec["adapter"].is_string() && rec["seconds"].as_f64().unwrap() > 0.0);
            assert!(rec["models"].as_object().unwrap().values().all(|v| v.as_str().is_some_and(|s| s.len() == 64)));
            let png = check_files(&out, &rec);
            let (embedded, _) = nodes::png_meta::embedded_graph(&std::fs::read(&png).unwrap()).unwrap().unwrap();
            assert!(embedded.contains(&format!("\"seed\": {seed}")) && embedded.contains(prompt), "{embedded}");
            shas.insert(rec["files"][0]["sha256"].as_str().unwrap().to_string());
            rows.push(row);
        }
    }
    rows.sort();
    assert_eq!(rows, (0..12).collect::<Vec<u64>>(), "every row once");
    assert_eq!(shas.len(), 12, "each row its own picture");
    no_partials(&out);
    let (code, s) = status(&g, &params, &out);
    assert_eq!(code, Some(0), "{s}");
    assert_eq!((s["done"].clone(), s["missing"].clone()), (12.into(), serde_json::json!([])));
}

#[cfg(unix)]
#[test]
fn a_shard_killed_mid_row_reruns_only_its_missing_rows_and_leaves_no_partial_file() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("sweep-kill");
    let g = graph(&dir);
    let params = dir.join("p.jsonl");
    std::fs::write(&params, (1..=4).map(|s| format!("{{\"sample.seed\": {s}}}\n")).collect::<String>()).unwrap();
    let out = dir.join("out");
    // Each row waits 4 s between rendering and going into place: a --status and the kill land in that window.
    let mut child = sweep(&g, &params, &out, &[])
        .env("SDGRAPH_TEST_SWEEP_STALL_MS", "4000")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    loop {
        let l = lines.next().expect("the sweep ended before row 1 was rendered").unwrap();
        seen.push_str(&l);
        seen.push('\n');
        if l == "row 1: committing" {
            break;
        }
    }
    // Meanwhile --status sees row 1 being rendered (its lock held), not just missing.
    let (_, s) = status(&g, &params, &out);
    assert_eq!((s["running"].clone(), s["missing"].clone()), (serde_json::json!([1]), serde_json::json!([1, 2, 3])));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // Row 1's picture was written, in its partial folder only.
    let partial: Vec<String> = names(&out).into_iter().filter(|n| n.starts_with(".row-000001.partial-")).collect();
    assert_eq!(partial.len(), 1, "{:?}\n{seen}", names(&out));
    assert!(names(&out.join(&partial[0])).contains(&"x_00001.png".to_string()));
    assert!(!out.join("row-000001").exists());
    assert_eq!(manifest(&out.join("manifest-0-of-1.jsonl")).len(), 1);
    let (code, s) = status(&g, &params, &out);
    assert_eq!((code, s["done"].clone(), s["missing"].clone()), (Some(1), 1.into(), serde_json::json!([1, 2, 3])));
    assert_eq!(s["running"], serde_json::json!([]), "the kernel dropped the dead process's lock");

    let o = finished(sweep(&g, &params, &out, &[]).stderr(Stdio::piped()).spawn().unwrap());
    let err = text(&o.stderr);
    assert!(err.contains("row 0: done before") && !err.contains("row 0: rendering"), "{err}");
    for r in 1..4 {
        assert!(err.contains(&format!("row {r}: rendering")), "{err}");
    }
    assert!(err.contains("3 rendered, 1 done before"), "{err}");
    no_partials(&out);
    let recs = manifest(&out.join("manifest-0-of-1.jsonl"));
    let rows: Vec<u64> = recs.iter().map(|r| r["row"].as_u64().unwrap()).collect();
    assert_eq!(rows, [0, 1, 2, 3]);
    recs.iter().for_each(|r| drop(check_files(&out, r)));
    assert_eq!(status(&g, &params, &out).0, Some(0));

    // Killed between the rename and the manifest line: the folder's own record becomes the line, nothing renders.
    let lines: Vec<String> = recs.iter().filter(|r| r["row"] != 2).map(|r| r.to_string() + "\n").collect();
    std::fs::write(out.join("manifest-0-of-1.jsonl"), lines.concat()).unwrap();
    let o = finished(sweep(&g, &params, &out, &[]).stderr(Stdio::piped()).spawn().unwrap());
    let err = text(&o.stderr);
    assert!(err.contains("row 2: was in place without its manifest line") && !err.contains("rendering"), "{err}");
    let rows: Vec<u64> =
        manifest(&out.join("manifest-0-of-1.jsonl")).iter().map(|r| r["row"].as_u64().unwrap()).collect();
    assert_eq!(rows, [0, 1, 3, 2]);
}

#[test]
fn two_processes_given_the_same_shard_render_and_record_each_row_once() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("sweep-twice");
    let g = graph(&dir);
    let params = dir.join("p.csv");
    std::fs::write(&params, "sample.seed,pos.text\n1,a fox\n2,\"a cat, sitting\"\n3,\n4,a dog\n5,a fox\n6,a cow\n")
        .unwrap();
    let out = dir.join("out");
    // A slow commit keeps both processes busy at once: a retry overlapping its original.
    let start = || {
        sweep(&g, &params, &out, &["--shard", "0/1"])
            .env("SDGRAPH_TEST_SWEEP_STALL_MS", "300")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start(), start());
    let (a, b) = (text(&finished(a).stderr), text(&finished(b).stderr));
    let rendered = |err: &str| err.matches(": rendering").count();
    assert_eq!(rendered(&a) + rendered(&b), 6, "each row rendered once:\n{a}\n----\n{b}");
    let recs = manifest(&out.join("manifest-0-of-1.jsonl"));
    let mut rows: Vec<u64> = recs.iter().map(|r| r["row"].as_u64().unwrap()).collect();
    rows.sort();
    assert_eq!(rows, [0, 1, 2, 3, 4, 5], "one manifest line per row:\n{a}\n----\n{b}");
    recs.iter().for_each(|r| drop(check_files(&out, r)));
    assert_eq!(recs.iter().find(|r| r["row"] == 1).unwrap()["params"]["pos.text"], "a cat, sitting");
    assert_eq!(recs.iter().find(|r| r["row"] == 2).unwrap()["params"], serde_json::json!({ "sample.seed": 3 }));
    no_partials(&out);
}

#[test]
fn a_failed_row_is_recorded_with_its_error_and_the_shard_goes_on() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = crate::common::temp_dir("sweep-fail");
    let g = graph(&dir);
    let params = dir.join("p.jsonl");
    std::fs::write(
        &params,
        // Row 3 repeats row 2: even its SaveImage is in the cache, yet it must write its own picture.
        "{\"sample.seed\": 1}\n{\"sample.seed\": 2, \"ckpt.ckpt_name\": \"nowhere.safetensors\"}\n{\"sample.seed\": 3}\n{\"sample.seed\": 3}\n",
    )
    .unwrap();
    let out = dir.join("out");
    let o = sweep(&g, &params, &out, &[]).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let recs = manifest(&out.join("manifest-0-of-1.jsonl"));
    let ok: Vec<(u64, bool)> = recs.iter().map(|r| (r["row"].as_u64().unwrap(), r["ok"] == true)).collect();
    assert_eq!(ok, [(0, true), (1, false), (2, true), (3, true)]);
    assert_eq!(check_files(&out, &recs[3]).file_name(), check_files(&out, &recs[2]).file_name());
    assert_eq!(recs[3]["files"][0]["sha256"], recs[2]["files"][0]["sha256"]);
    assert!(recs[1]["error"].as_str().unwrap().contains("nowhere.safetensors"), "{}", recs[1]);
    assert!(!out.join("row-000001").exists());
    no_partials(&out);
    let (code, s) = status(&g, &params, &out);
    assert_eq!((code, s["done"].clone(), s["missing"].clone()), (Some(1), 3.into(), serde_json::json!([])));
    assert_eq!(s["failed"][0]["row"], 1);
    assert!(s["failed"][0]["error"].as_str().unwrap().contains("nowhere.safetensors"), "{s}");
}

#[test]
fn bad_params_files_are_errors_naming_the_row_and_column() {
    let dir = crate::common::temp_dir("sweep-bad");
    let g = Path::new(env!("CARGO_MANIFEST_DIR")).join("graphs/txt2img.ron");
    let out = dir.join("out");
    let cases: [(&str, &str, &[&str]); 6] = [
        (
            "unknown.csv",
            "sample.seed,sample.bogus\n1,2\n3,4\n",
            &["row 0 (line 2), column \"sample.bogus\"", "no param \"bogus\"", "(and in 1 more rows)"],
        ),
        ("node.csv", "smaple.seed\n1\n", &["row 0 (line 2), column \"smaple.seed\"", "did you mean \"sample\""]),
        ("ragged.csv", "sample.seed,pos.text\n1,a\n2,b,c\n", &["row 1 (line 3)", "3 field(s)", "2 column(s)"]),
        ("quote.csv", "sample.seed,pos.text\n1,\"a\n", &["line 2", "quoted field is not closed"]),
        (
            "types.jsonl",
            "{\"sample.seed\": 1}\n{\"sample.seed\": \"abc\"}\n",
            &["row 1 (line 2), column \"sample.seed\"", "expected an integer", "\"abc\""],
        ),
        ("types.ron", "[{\"sample.cfg\": 7.5},\n {\"sample.cfg\": true}]", &["row 1 (line 2), column \"sample.cfg\""]),
    ];
    for (name, body, wanted) in cases {
        let params = dir.join(name);
        std::fs::write(&params, body).unwrap();
        let o = sweep(&g, &params, &out, &[]).output().unwrap();
        let err = text(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{name}: {err}");
        assert!(err.contains(name), "{name}: {err}");
        for w in wanted {
            assert!(err.contains(w), "{name}: wanted {w:?} in {err}");
        }
    }
    assert!(!out.exists(), "nothing is written for a bad params file");
    // A shard the scheduler gives badly is refused as clearly.
    let params = dir.join("ok.csv");
    std::fs::write(&params, "sample.seed\n1\n").unwrap();
    for (env, wanted) in [
        (&[("JOB_COMPLETION_INDEX", "2")][..], "SDGRAPH_SWEEP_SHARDS"),
        (&[("JOB_COMPLETION_INDEX", "3"), ("SDGRAPH_SWEEP_SHARDS", "3")][..], "index 3 is not below the shard count 3"),
        (&[("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_COUNT", "2"), ("SLURM_ARRAY_TASK_MIN", "4")][..], "below"),
        // With the count given, the task ID is the shard (a retry of some shards: --array=3,5).
        (
            &[("SLURM_ARRAY_TASK_ID", "8"), ("SLURM_ARRAY_TASK_MIN", "3"), ("SDGRAPH_SWEEP_SHARDS", "8")][..],
            "index 8 is not",
        ),
        (&[("SLURM_ARRAY_TASK_ID", "1"), ("SLURM_ARRAY_TASK_COUNT", "2"), ("SLURM_ARRAY_TASK_STEP", "2")][..], "STEP"),
    ] {
        let o = sweep(&g, &params, &out, &[]).envs(env.iter().copied()).output().unwrap();
        assert_eq!(o.status.code(), Some(2));
        assert!(text(&o.stderr).contains(wanted), "{}", text(&o.stderr));
    }
    let o = sweep(&g, &params, &out, &["--shard", "1"]).output().unwrap();
    assert!(o.status.code() == Some(2) && text(&o.stderr).contains("expected I/N"), "{}", text(&o.stderr));
}
