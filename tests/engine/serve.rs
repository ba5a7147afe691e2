//! `sdgraph serve` from outside, as ComfyUI's clients use it: a Python client written the way ComfyUI's
//! script examples are (tests/fixtures/serve/comfy_client.py: websocket-client and urllib) queues a prompt
//! and gets its picture; a server killed with SIGKILL runs what it had not finished after a restart; the
//! running prompt can be interrupted; bad requests, paths out of their folders and missing tokens are
//! refused. The model is the tiny SD fixture, under a ComfyUI models folder.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};

use crate::common::{TempDir, sdgraph_command, temp_dir};

/// A running `sdgraph serve`, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server on a free loopback port with `dir`'s models/, output/, input/ and state/ folders.
fn start(dir: &Path, extra: &[&str]) -> Server {
    let mut child = sdgraph_command()
        .args(["serve", "--listen", "127.0.0.1:0", "--models-dir"])
        .arg(dir.join("models"))
        .arg("--output-dir")
        .arg(dir.join("output"))
        .arg("--input-dir")
        .arg(dir.join("input"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server exited before listening").unwrap();
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.trim().to_string();
        }
    };
    // Keep reading stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Server { child, addr }
}

/// One HTTP/1.1 request (the body as JSON when given); the status and the body.
fn http(addr: &str, method: &str, path: &str, body: Option<&Json>, token: Option<&str>) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut rest = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        rest = unchunk(&rest);
    }
    (status, rest)
}

fn unchunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

/// `POST /upload/image` with `data` as the multipart `image` file named `name`.
fn upload(addr: &str, name: &str, data: &[u8]) -> (u16, Vec<u8>) {
    upload_to(addr, name, data, "")
}

/// [`upload`] into `subfolder`.
fn upload_to(addr: &str, name: &str, data: &[u8], subfolder: &str) -> (u16, Vec<u8>) {
    let boundary = "sdgraphtestboundary";
    let mut body = format!("--{boundary}\r\nContent-Disposition: form-data; name=\"subfolder\"\r\n\r\n{subfolder}\r\n")
        .into_bytes();
    body.extend(format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes());
    body.extend_from_slice(data);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /upload/image HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP answer");
    let status = String::from_utf8_lossy(&raw[..split]).split_whitespace().nth(1).unwrap().parse().unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let rest = raw[split + 4..].to_vec();
    (status, if head.contains("transfer-encoding: chunked") { unchunk(&rest) } else { rest })
}

fn json_of(bytes: &[u8]) -> Json {
    serde_json::from_slice(bytes).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)))
}

/// A folder with the tiny checkpoint (full CLIP vocabulary) as `models/checkpoints/tiny.safetensors`.
fn setup(name: &str) -> TempDir {
    let dir = temp_dir(name);
    let checkpoints = dir.join("models/checkpoints");
    std::fs::create_dir_all(&checkpoints).unwrap();
    let made = crate::common::sd_tiny::full_vocab_checkpoint(&dir);
    std::fs::rename(made, checkpoints.join("tiny.safetensors")).unwrap();
    dir
}

/// ComfyUI's default workflow in API format, on the tiny model, at 32x32 (an 8x8 picture from the tiny VAE).
fn txt2img(steps: u64, size: u64, seed: u64) -> Json {
    json!({
        "3": {"class_type": "KSampler", "inputs": {"seed": seed, "steps": steps, "cfg": 4.0, "sampler_name": "euler",
              "scheduler": "normal", "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
              "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red square", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}},
    })
}

fn submit(addr: &str, prompt: &Json) -> String {
    let (status, body) = http(addr, "POST", "/prompt", Some(&json!({ "prompt": prompt })), None);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    json_of(&body)["prompt_id"].as_str().unwrap().to_string()
}

/// Polls `/history/{id}` until the prompt is there (or `limit` passes); its entry.
fn wait_history(addr: &str, id: &str, limit: Duration) -> Json {
    let t0 = Instant::now();
    loop {
        let (_, body) = http(addr, "GET", &format!("/history/{id}"), None, None);
        if let Some(entry) = json_of(&body).get(id) {
            return entry.clone();
        }
        assert!(t0.elapsed() < limit, "prompt {id} did not finish in {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Polls `/queue` until `id` is the running prompt.
fn wait_running(addr: &str, id: &str) {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(120) {
        let (_, body) = http(addr, "GET", "/queue", None, None);
        if json_of(&body)["queue_running"].as_array().unwrap().iter().any(|item| item[1] == id) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("prompt {id} never ran");
}

fn message_types(entry: &Json) -> Vec<String> {
    entry["status"]["messages"].as_array().unwrap().iter().map(|m| m[0].as_str().unwrap().to_string()).collect()
}

#[test]
fn a_comfyui_client_queues_a_prompt_and_gets_its_picture() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = setup("serve-client");
    let server = start(&dir, &["--preview-method", "latent2rgb"]);
    let prompt_file = dir.join("prompt.json");
    std::fs::write(&prompt_file, txt2img(3, 32, 5).to_string()).unwrap();
    let picture = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo/green_square.png");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/serve/comfy_client.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&server.addr)
        .arg(&prompt_file)
        .arg(&picture)
        .output()
        .expect("python3 runs the ComfyUI client script (it needs the websocket-client package: .ci/run installs it)");
    assert!(out.status.success(), "comfy_client.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let got = json_of(&out.stdout);

    // The upload landed in the input folder under its own name.
    assert_eq!(got["upload"], json!({"name": "green_square.png", "subfolder": "", "type": "input"}));
    assert!(dir.join("input/green_square.png").is_file());
    // The messages, in ComfyUI's order and shapes.
    let msgs = got["messages"].as_array().unwrap();
    let types: Vec<&str> = msgs.iter().map(|m| m["type"].as_str().unwrap()).collect();
    let first = |t: &str| types.iter().position(|x| *x == t).unwrap_or_else(|| panic!("no {t} in {types:?}"));
    assert_eq!(types[0], "status", "{types:?}");
    assert!(msgs[0]["data"]["sid"].is_string(), "the first status carries the client id");
    assert!(first("execution_start") < first("executing") && first("executing") < first("executed"), "{types:?}");
    let progress = msgs.iter().find(|m| m["type"] == "progress" && m["data"]["node"] == "3").expect("sampler progress");
    assert_eq!(progress["data"]["max"], 3, "{progress}");
    // With --preview-method latent2rgb, preview frames: event 1 (PREVIEW_IMAGE), image type 2 (PNG).
    let frame = msgs.iter().find(|m| m["type"] == "binary").expect("a preview frame");
    assert_eq!(frame["head"], json!([0, 0, 0, 1, 0, 0, 0, 2]));
    let executed = msgs.iter().find(|m| m["type"] == "executed").unwrap();
    assert_eq!(executed["data"]["node"], "9");
    assert_eq!(executed["data"]["output"]["images"][0]["type"], "output");
    let last = msgs.last().unwrap();
    assert_eq!((last["type"].as_str(), &last["data"]["node"]), (Some("executing"), &Json::Null));
    // The history and the picture through /view.
    assert_eq!(got["history"]["status"]["status_str"], "success");
    assert_eq!(got["history"]["outputs"]["9"]["images"][0]["filename"], "ComfyUI_00001.png");
    let pictures = got["pictures"].as_array().unwrap();
    assert_eq!(pictures.len(), 1);
    assert_eq!(pictures[0]["png"], true);
    let saved = image::open(dir.join("output/ComfyUI_00001.png")).unwrap();
    assert_eq!(saved.width(), 8, "the tiny VAE makes 8 pixels of a 4-wide latent");

    // The same prompt again: everything before SaveImage comes from the executor's cache.
    let id = submit(&server.addr, &txt2img(3, 32, 5));
    let entry = wait_history(&server.addr, &id, Duration::from_secs(120));
    let cached = entry["status"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m[0] == "execution_cached")
        .map(|m| m[1]["nodes"].clone())
        .unwrap();
    for node in ["3", "4", "5", "6", "7", "8"] {
        assert!(cached.as_array().unwrap().iter().any(|n| n == node), "node {node} not cached: {cached}");
    }
}

/// The default workflow in API format with ComfyUI's `_meta` titles, on the demo model.
fn titled_demo_workflow() -> Json {
    let mut w = txt2img(8, 64, 11);
    w["4"]["inputs"]["ckpt_name"] = "sdgraph-demo.safetensors".into();
    for (id, title) in [
        ("3", "KSampler"),
        ("4", "Load Checkpoint"),
        ("5", "Empty Latent Image"),
        ("6", "Positive"),
        ("7", "Negative"),
        ("8", "VAE Decode"),
        ("9", "Save Image"),
    ] {
        w[id]["_meta"] = json!({ "title": title });
    }
    w
}

#[test]
fn a_comfyui_client_library_from_pypi_renders_the_demo_model() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = temp_dir("serve-simplified");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(dir.join("models/checkpoints")).unwrap();
    std::fs::copy(
        root.join("assets/demo/sdgraph-demo.safetensors"),
        dir.join("models/checkpoints/sdgraph-demo.safetensors"),
    )
    .unwrap();
    let server = start(&dir, &[]);
    let workflow = dir.join("workflow_api.json");
    std::fs::write(&workflow, titled_demo_workflow().to_string()).unwrap();
    let out = std::process::Command::new("python3")
        .arg(root.join("tests/fixtures/serve/simplified_client.py"))
        .arg(&server.addr)
        .arg(&workflow)
        .arg(dir.join("got"))
        .arg("a yellow square on a blue background, bottom right")
        .output()
        .expect("python3 runs simplified_client.py (it needs comfy-api-simplified: .ci/run installs it)");
    assert!(out.status.success(), "simplified_client.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let got = json_of(&out.stdout);
    assert_eq!(got["images"].as_object().map(|o| o.len()), Some(1), "{got}");
    // What the library fetched through /view is the picture the server saved, and it shows the prompt.
    let fetched = std::fs::read(dir.join("got/ComfyUI_00001.png")).unwrap();
    assert_eq!(fetched, std::fs::read(dir.join("output/ComfyUI_00001.png")).unwrap());
    let pic = image::load_from_memory(&fetched).unwrap().to_rgb8();
    assert_eq!(pic.dimensions(), (64, 64));
    let blue = |p: &image::Rgb<u8>| p[2] > 150 && p[0] < 120;
    let yellow = |p: &image::Rgb<u8>| p[0] > 150 && p[1] > 130 && p[2] < 120;
    let share = |keep: &dyn Fn(u32, u32) -> bool, is: &dyn Fn(&image::Rgb<u8>) -> bool| {
        let px: Vec<_> = pic.enumerate_pixels().filter(|(x, y, _)| keep(*x, *y)).collect();
        px.iter().filter(|(_, _, p)| is(p)).count() as f64 / px.len() as f64
    };
    let (top_left_blue, bottom_right_yellow) =
        (share(&|x, y| x < 24 && y < 24, &blue), share(&|x, y| x >= 32 && y >= 32, &yellow));
    assert!(
        top_left_blue > 0.8 && bottom_right_yellow > 0.15,
        "blue {top_left_blue:.2}, yellow {bottom_right_yellow:.2}"
    );
}

#[test]
fn a_killed_server_runs_what_it_had_not_finished_after_a_restart() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = setup("serve-restart");
    let mut server = start(&dir, &[]);
    let long = submit(&server.addr, &txt2img(150, 64, 1));
    let short = submit(&server.addr, &txt2img(2, 32, 2));
    wait_running(&server.addr, &long);
    // SIGKILL: no chance to write anything more.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let server = start(&dir, &[]);
    for id in [&long, &short] {
        let entry = wait_history(&server.addr, id, Duration::from_secs(600));
        assert_eq!(entry["status"]["status_str"], "success", "{id}: {entry}");
    }
    let (_, body) = http(&server.addr, "GET", "/queue", None, None);
    assert_eq!(json_of(&body), json!({"queue_running": [], "queue_pending": []}));
    // A third start has both in its history, and nothing to run.
    drop(server);
    let server = start(&dir, &[]);
    let (_, body) = http(&server.addr, "GET", "/history", None, None);
    let history = json_of(&body);
    assert!(history.get(&long).is_some() && history.get(&short).is_some(), "{history}");
}

#[cfg(unix)]
#[test]
fn sigterm_stops_the_server_and_keeps_the_queue() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = setup("serve-sigterm");
    let mut server = start(&dir, &[]);
    let long = submit(&server.addr, &txt2img(300, 64, 3));
    let short = submit(&server.addr, &txt2img(2, 32, 4));
    wait_running(&server.addr, &long);
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let t0 = Instant::now();
    let code = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "the server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0), "a clean stop");
    let server = start(&dir, &[]);
    for id in [&long, &short] {
        let entry = wait_history(&server.addr, id, Duration::from_secs(600));
        assert_eq!(entry["status"]["status_str"], "success", "{id}: {entry}");
    }
}

#[test]
fn the_running_prompt_can_be_interrupted() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = setup("serve-interrupt");
    let server = start(&dir, &[]);
    let id = submit(&server.addr, &txt2img(500, 64, 1));
    wait_running(&server.addr, &id);
    let (status, _) = http(&server.addr, "POST", "/interrupt", Some(&json!({})), None);
    assert_eq!(status, 200);
    let entry = wait_history(&server.addr, &id, Duration::from_secs(120));
    assert_eq!(entry["status"]["status_str"], "error");
    assert!(message_types(&entry).contains(&"execution_interrupted".to_string()), "{entry}");
}

#[test]
fn the_queue_and_history_can_be_edited_and_every_path_is_also_under_api() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = setup("serve-edit");
    let server = start(&dir, &[]);
    let addr = server.addr.as_str();
    let long = submit(addr, &txt2img(500, 64, 1));
    wait_running(addr, &long);
    let (a, b, c) =
        (submit(addr, &txt2img(1, 32, 2)), submit(addr, &txt2img(1, 32, 3)), submit(addr, &txt2img(1, 32, 4)));
    let pending = |addr: &str| -> Vec<String> {
        let (_, body) = http(addr, "GET", "/api/queue", None, None);
        json_of(&body)["queue_pending"].as_array().unwrap().iter().map(|i| i[1].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(pending(addr), [a.clone(), b.clone(), c.clone()]);
    let (status, _) = http(addr, "POST", "/queue", Some(&json!({"delete": [b]})), None);
    assert_eq!(status, 200);
    assert_eq!(pending(addr), [a.clone(), c.clone()]);
    // `front` puts a prompt first.
    let (_, body) = http(addr, "POST", "/api/prompt", Some(&json!({"prompt": txt2img(1, 32, 5), "front": true})), None);
    let first = json_of(&body)["prompt_id"].as_str().unwrap().to_string();
    assert_eq!(pending(addr), [first, a.clone(), c.clone()]);
    let (status, _) = http(addr, "POST", "/queue", Some(&json!({"clear": true})), None);
    assert_eq!(status, 200);
    assert!(pending(addr).is_empty());
    let (status, _) = http(addr, "POST", "/api/interrupt", Some(&json!({"prompt_id": long})), None);
    assert_eq!(status, 200);
    wait_history(addr, &long, Duration::from_secs(120));
    let (status, _) = http(addr, "POST", "/history", Some(&json!({"delete": [long]})), None);
    assert_eq!(status, 200);
    let (_, body) = http(addr, "GET", "/history", None, None);
    assert_eq!(json_of(&body), json!({}));
    // Deleted prompts stay deleted after a restart; nothing is left to run.
    drop(server);
    let server = start(&dir, &[]);
    let (_, body) = http(&server.addr, "GET", "/queue", None, None);
    assert_eq!(json_of(&body), json!({"queue_running": [], "queue_pending": []}));
    let (_, body) = http(&server.addr, "GET", "/history", None, None);
    assert_eq!(json_of(&body), json!({}));
    // What the server has.
    let (_, body) = http(&server.addr, "GET", "/system_stats", None, None);
    let stats = json_of(&body);
    assert!(
        stats["system"]["ram_total"].as_u64().unwrap() > 0 && stats["devices"].as_array().unwrap().len() == 1,
        "{stats}"
    );
    std::fs::create_dir_all(dir.join("models/embeddings/sub")).unwrap();
    std::fs::write(dir.join("models/embeddings/sub/style.safetensors"), b"x").unwrap();
    let (_, body) = http(&server.addr, "GET", "/embeddings", None, None);
    assert_eq!(json_of(&body), json!(["sub/style"]));
    let (status, _) = http(&server.addr, "GET", "/models/nowhere", None, None);
    assert_eq!(status, 404);
}

#[test]
fn bad_requests_and_paths_outside_their_folders_are_refused() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    let dir = setup("serve-refusals");
    let server = start(&dir, &[]);
    let addr = server.addr.as_str();
    // A node kind sdgraph lacks, a model file that is not there: nothing is queued.
    let (status, body) =
        http(addr, "POST", "/prompt", Some(&json!({"prompt": {"1": {"class_type": "Nope", "inputs": {}}}})), None);
    let v = json_of(&body);
    assert_eq!(status, 400);
    assert_eq!(v["error"]["type"], "prompt_outputs_failed_validation");
    assert!(v["error"]["details"].as_str().unwrap().contains("no node kind \"Nope\""), "{v}");
    assert_eq!(v["node_errors"]["1"]["class_type"], "Nope", "{v}");
    assert!(v["node_errors"]["1"]["errors"][0]["message"].as_str().unwrap().contains("Nope"), "{v}");
    let mut missing = txt2img(2, 32, 1);
    missing["4"]["inputs"]["ckpt_name"] = "absent.safetensors".into();
    let (status, body) = http(addr, "POST", "/prompt", Some(&json!({ "prompt": missing })), None);
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("absent.safetensors"));
    let (status, body) = http(addr, "POST", "/prompt", Some(&json!({"nothing": 1})), None);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (_, body) = http(addr, "GET", "/queue", None, None);
    assert_eq!(json_of(&body), json!({"queue_running": [], "queue_pending": []}));
    // /view stays inside its folders.
    std::fs::write(dir.join("secret.txt"), "x").unwrap();
    for path in ["/view?filename=../secret.txt", "/view?filename=secret.txt&subfolder=..", "/view?filename=/etc/passwd"]
    {
        let (status, _) = http(addr, "GET", path, None, None);
        assert_eq!(status, 400, "{path}");
    }
    let (status, _) = http(addr, "GET", "/view?filename=none.png&type=output", None, None);
    assert!(status == 400 || status == 404);
    let (status, _) = http(addr, "GET", "/view?filename=x.png&type=elsewhere", None, None);
    assert_eq!(status, 400);
    // Uploads must be pictures, under a plain name.
    let (status, body) = upload(addr, "notes.png", b"not a picture");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("is not a picture"));
    let png = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/demo/green_square.png")).unwrap();
    let (status, _) = upload(addr, "../escape.png", &png);
    assert_eq!(status, 400);
    assert!(!dir.join("escape.png").exists());
    let (status, body) = upload(addr, "ok.png", &png);
    assert_eq!((status, json_of(&body)["name"].as_str()), (200, Some("ok.png")));
    // Links out of the folders are not followed: a linked subfolder, a linked file with overwrite.
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(dir.as_ref() as &Path, dir.join("input/out")).unwrap();
        std::fs::write(dir.join("outside.png"), &png).unwrap();
        std::os::unix::fs::symlink(dir.join("outside.png"), dir.join("input/linked.png")).unwrap();
        for path in ["/view?filename=secret.txt&subfolder=out&type=input", "/view?filename=linked.png&type=input"] {
            let (status, _) = http(addr, "GET", path, None, None);
            assert_eq!(status, 400, "{path}");
        }
        let (status, _) = upload_to(addr, "x.png", &png, "out");
        assert_eq!(status, 400);
        assert!(!dir.join("x.png").exists());
    }
    let (status, body) = upload(addr, "ok.png", &png);
    assert_eq!((status, json_of(&body)["name"].as_str()), (200, Some("ok (1).png")), "a taken name is not overwritten");
    // The node kinds in ComfyUI's terms, with the checkpoint among ckpt_name's choices.
    let (_, body) = http(addr, "GET", "/object_info/CheckpointLoaderSimple", None, None);
    let info = json_of(&body);
    assert_eq!(info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0], json!(["tiny.safetensors"]));
    assert_eq!(info["CheckpointLoaderSimple"]["output"], json!(["MODEL", "CLIP", "VAE"]));
    let (_, body) = http(addr, "GET", "/models/checkpoints", None, None);
    assert_eq!(json_of(&body), json!(["tiny.safetensors"]));
    drop(server);

    // Another address than loopback needs a token; with one, requests without it are refused.
    let out = sdgraph_command().args(["serve", "--listen", "0.0.0.0:0"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--auth-token"), "{}", String::from_utf8_lossy(&out.stderr));
    let server = start(&dir, &["--auth-token", "s3cret"]);
    let (status, _) = http(&server.addr, "GET", "/queue", None, None);
    assert_eq!(status, 401);
    let (status, _) = http(&server.addr, "GET", "/queue", None, Some("wrong"));
    assert_eq!(status, 401);
    let (status, _) = http(&server.addr, "GET", "/queue", None, Some("s3cret"));
    assert_eq!(status, 200);
}

/// Resident memory of process `pid` in KiB (Linux), 0 elsewhere.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// 8 clients queue `SDGRAPH_TEST_SERVE_LOAD` prompts each (25 for the 200; 5 by default, to keep CI
/// short) at once.
#[test]
fn eight_clients_queue_many_prompts_and_every_one_finishes_in_order() {
    if gpu::testing::shared_gpu().is_none() {
        return;
    }
    const CLIENTS: u64 = 8;
    let each: u64 = std::env::var("SDGRAPH_TEST_SERVE_LOAD").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let dir = setup("serve-load");
    let server = start(&dir, &[]);
    let addr = server.addr.clone();
    // Warm up (the model loads once), then note the memory.
    wait_history(&addr, &submit(&addr, &txt2img(1, 32, 999)), Duration::from_secs(120));
    let rss_before = rss_kib(server.child.id());
    let t0 = Instant::now();
    let ids: Vec<Vec<(String, i64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let addr = addr.clone();
                s.spawn(move || {
                    (0..each)
                        .map(|i| {
                            let body =
                                json!({ "prompt": txt2img(1, 32, c * 1000 + i), "client_id": format!("client-{c}") });
                            let (status, answer) = http(&addr, "POST", "/prompt", Some(&body), None);
                            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
                            let v = json_of(&answer);
                            (v["prompt_id"].as_str().unwrap().to_string(), v["number"].as_i64().unwrap())
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let last = ids.iter().flatten().max_by_key(|(_, n)| *n).unwrap().0.clone();
    wait_history(&addr, &last, Duration::from_secs(1200));
    let seconds = t0.elapsed().as_secs_f64();
    let (_, body) = http(&addr, "GET", "/history", None, None);
    let history = json_of(&body);
    for (c, list) in ids.iter().enumerate() {
        // Each client's prompts got increasing numbers, and each finished with its picture.
        assert!(list.windows(2).all(|w| w[0].1 < w[1].1), "client {c}: numbers out of order");
        for (id, _) in list {
            let entry = &history[id];
            assert_eq!(entry["status"]["status_str"], "success", "{id}: {entry}");
            assert_eq!(entry["outputs"]["9"]["images"].as_array().map(Vec::len), Some(1), "{id}");
        }
    }
    let pictures = std::fs::read_dir(dir.join("output")).unwrap().count() as u64;
    assert_eq!(pictures, CLIENTS * each + 1, "one picture per prompt, none overwritten");
    let rss_after = rss_kib(server.child.id());
    eprintln!(
        "serve load: {} prompts from {CLIENTS} clients in {seconds:.1} s ({:.1} prompts/s); server memory {} -> {} MiB",
        CLIENTS * each,
        (CLIENTS * each) as f64 / seconds,
        rss_before / 1024,
        rss_after / 1024
    );
}
