//! The HTTP and WebSocket routes, with ComfyUI's paths, fields and answers (each also under `/api`, as
//! ComfyUI's frontend calls them).

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{DefaultBodyLimit, Multipart, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json as AxJson, Router};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::sync::broadcast;

use super::prepare::{ServeCtx, validation_error};
use super::queue::Queue;
use super::worker::{Event, Frame, resolve_view, status};
use super::{info, new_id};

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    pub ctx: Arc<ServeCtx>,
    pub queue: Arc<Queue>,
    pub events: broadcast::Sender<Event>,
    /// `Authorization: Bearer <token>` every request must carry, when set.
    pub token: Option<Arc<str>>,
    /// `/object_info`, made once from the node kinds.
    pub object_info: Arc<Json>,
}

/// Largest prompt body; pictures may be larger.
const PROMPT_LIMIT: usize = 16 << 20;
const UPLOAD_LIMIT: usize = 64 << 20;
/// Prompts waiting or running before `/prompt` answers 429.
const MAX_QUEUED: usize = 10_000;

pub fn router(app: App) -> Router {
    let api = Router::new()
        .route("/ws", get(ws))
        .route("/prompt", get(prompt_info).post(post_prompt).layer(DefaultBodyLimit::max(PROMPT_LIMIT)))
        .route("/queue", get(get_queue).post(post_queue))
        .route("/interrupt", post(interrupt))
        .route("/history", get(get_history).post(post_history))
        .route("/history/{id}", get(get_history_one))
        .route("/view", get(view))
        .route("/upload/image", post(upload_image).layer(DefaultBodyLimit::max(UPLOAD_LIMIT)))
        .route("/object_info", get(object_info))
        .route("/object_info/{kind}", get(object_info_one))
        .route("/system_stats", get(system_stats))
        .route("/embeddings", get(embeddings))
        .route("/models", get(model_folders))
        .route("/models/{folder}", get(models_in));
    Router::new()
        .route("/", get(|| async { "sdgraph serve: ComfyUI's HTTP and WebSocket API (no web interface)\n" }))
        .merge(api.clone())
        .nest("/api", api)
        .layer(middleware::from_fn_with_state(app.clone(), authorize))
        .with_state(app)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let message = message.into();
    (status, AxJson(json!({ "error": { "type": "bad_request", "message": message, "details": "" } }))).into_response()
}

/// Refuses a request without the token (when there is one); the WebSocket may also give it as
/// `?token=`, since browsers cannot set headers on it.
async fn authorize(State(app): State<App>, req: Request, next: Next) -> Response {
    let Some(token) = &app.token else { return next.run(req).await };
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let query_token =
        req.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")).map(|t| t.to_string()));
    if bearer.is_some_and(|b| constant_time_eq(b, token)) || query_token.is_some_and(|t| constant_time_eq(&t, token)) {
        return next.run(req).await;
    }
    error(StatusCode::UNAUTHORIZED, "missing or wrong token: send Authorization: Bearer <token>")
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// ---------------------------------------------------------------- the queue

#[derive(Deserialize)]
struct PromptBody {
    prompt: Json,
    client_id: Option<String>,
    prompt_id: Option<String>,
    #[serde(default)]
    front: bool,
    number: Option<f64>,
    #[serde(default)]
    extra_data: Json,
}

async fn prompt_info(State(app): State<App>) -> AxJson<Json> {
    AxJson(json!({ "exec_info": { "queue_remaining": app.queue.remaining() } }))
}

/// Checks the graph (nothing runs unless all of it is valid), journals it, then answers.
async fn post_prompt(State(app): State<App>, body: axum::body::Bytes) -> Response {
    let body: PromptBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("the body is not a prompt: {e}")),
    };
    let ctx = app.ctx.clone();
    let prompt = body.prompt.clone();
    // Importing reads the models folders: off the async threads.
    let checked = tokio::task::spawn_blocking(move || ctx.prepare(&prompt).map(|p| p.comfy_ids)).await;
    match checked {
        Ok(Ok(_)) => {}
        Ok(Err((errs, ids))) => {
            return (StatusCode::BAD_REQUEST, AxJson(validation_error(&errs, &ids, &body.prompt))).into_response();
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    if app.queue.remaining() >= MAX_QUEUED {
        return error(StatusCode::TOO_MANY_REQUESTS, format!("the queue holds {MAX_QUEUED} prompts: try again later"));
    }
    let id = body.prompt_id.filter(|s| !s.is_empty() && s.len() <= 128).unwrap_or_else(new_id);
    // ComfyUI: a negative number, or `front`, puts the prompt first.
    let front = body.front || body.number.is_some_and(|n| n < 0.0);
    let queue = app.queue.clone();
    let (pid, client) = (id.clone(), body.client_id.clone());
    let submitted =
        tokio::task::spawn_blocking(move || queue.submit(pid, body.prompt, client, body.extra_data, front)).await;
    match submitted {
        Ok(Ok(number)) => {
            let _ = app.events.send(status(&app.queue, None));
            AxJson(json!({ "prompt_id": id, "number": number, "node_errors": {} })).into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("the queue journal: {e}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn get_queue(State(app): State<App>) -> AxJson<Json> {
    AxJson(app.queue.snapshot())
}

#[derive(Deserialize, Default)]
struct DeleteBody {
    #[serde(default)]
    clear: bool,
    #[serde(default)]
    delete: Vec<String>,
}

/// `{"clear": true}` empties the pending queue; `{"delete": [ids]}` removes those prompts.
async fn post_queue(State(app): State<App>, body: axum::body::Bytes) -> Response {
    let body: DeleteBody = serde_json::from_slice(&body).unwrap_or_default();
    let queue = app.queue.clone();
    let r = tokio::task::spawn_blocking(move || {
        if body.clear { queue.delete_pending(None) } else { queue.delete_pending(Some(&body.delete)) }
    })
    .await;
    match r {
        Ok(Ok(_)) => {
            let _ = app.events.send(status(&app.queue, None));
            StatusCode::OK.into_response()
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Deserialize, Default)]
struct InterruptBody {
    prompt_id: Option<String>,
}

async fn interrupt(State(app): State<App>, body: axum::body::Bytes) -> StatusCode {
    let body: InterruptBody = serde_json::from_slice(&body).unwrap_or_default();
    app.queue.interrupt(body.prompt_id.as_deref());
    StatusCode::OK
}

#[derive(Deserialize)]
struct HistoryQuery {
    max_items: Option<usize>,
}

async fn get_history(State(app): State<App>, Query(q): Query<HistoryQuery>) -> AxJson<Json> {
    AxJson(app.queue.history(None, q.max_items))
}

async fn get_history_one(State(app): State<App>, UrlPath(id): UrlPath<String>) -> AxJson<Json> {
    AxJson(app.queue.history(Some(&id), None))
}

async fn post_history(State(app): State<App>, body: axum::body::Bytes) -> Response {
    let body: DeleteBody = serde_json::from_slice(&body).unwrap_or_default();
    let queue = app.queue.clone();
    let r = tokio::task::spawn_blocking(move || {
        if body.clear { queue.delete_history(None) } else { queue.delete_history(Some(&body.delete)) }
    })
    .await;
    match r {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

// ---------------------------------------------------------------- files

#[derive(Deserialize)]
struct ViewQuery {
    filename: String,
    #[serde(default)]
    subfolder: String,
    #[serde(default, rename = "type")]
    ty: String,
}

async fn view(State(app): State<App>, Query(q): Query<ViewQuery>) -> Response {
    let path = match resolve_view(&app.ctx, &q.filename, &q.subfolder, &q.ty) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match tokio::fs::read(&path).await {
        Ok(bytes) => {
            let mime = mime_of(&path);
            ([(header::CONTENT_TYPE, mime)], Body::from(bytes)).into_response()
        }
        Err(e) => error(StatusCode::NOT_FOUND, format!("{}: {e}", q.filename)),
    }
}

fn mime_of(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        _ => "application/octet-stream",
    }
}

/// ComfyUI's upload: multipart `image` (the file), `subfolder`, `type` (input, temp or output),
/// `overwrite`; a name already taken becomes `name (1).ext` unless overwriting.
async fn upload_image(State(app): State<App>, mut form: Multipart) -> Response {
    let (mut data, mut name, mut subfolder, mut ty, mut overwrite) =
        (None, String::new(), String::new(), String::new(), false);
    loop {
        let field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("multipart: {e}")),
        };
        let field_name = field.name().unwrap_or("").to_string();
        if field_name == "image" {
            name = field.file_name().unwrap_or("").to_string();
            match field.bytes().await {
                Ok(b) => data = Some(b),
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("multipart: {e}")),
            }
            continue;
        }
        let text = field.text().await.unwrap_or_default();
        match field_name.as_str() {
            "subfolder" => subfolder = text,
            "type" => ty = text,
            "overwrite" => overwrite = text == "true" || text == "1",
            _ => {}
        }
    }
    let Some(data) = data else { return error(StatusCode::BAD_REQUEST, "no \"image\" file in the form") };
    // Only pictures: what LoadImage could read.
    let decodes = {
        let data = data.clone();
        tokio::task::spawn_blocking(move || image::load_from_memory(&data).map(|_| ()).map_err(|e| e.to_string())).await
    };
    let decodes = decodes.map_err(|e| e.to_string()).and_then(|r| r);
    if let Err(e) = decodes {
        return error(StatusCode::BAD_REQUEST, format!("{name:?} is not a picture: {e}"));
    }
    let ty = if ty.is_empty() { "input".to_string() } else { ty };
    let dir = match ty.as_str() {
        "input" => &app.ctx.input_dir,
        "temp" => &app.ctx.temp_dir,
        "output" => &app.ctx.output_dir,
        other => return error(StatusCode::BAD_REQUEST, format!("unknown type {other:?} (input, temp or output)")),
    };
    let rel = Path::new(&subfolder).join(&name);
    if name.is_empty() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return error(StatusCode::BAD_REQUEST, format!("{:?} is not a plain file name", rel.display().to_string()));
    }
    let folder = dir.join(&subfolder);
    if let Err(e) = tokio::fs::create_dir_all(&folder).await {
        return error(StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {e}", folder.display()));
    }
    let mut file_name = name.clone();
    if !overwrite {
        let (stem, ext) = match name.rsplit_once('.') {
            Some((s, e)) => (s.to_string(), format!(".{e}")),
            None => (name.clone(), String::new()),
        };
        let mut i = 1;
        while folder.join(&file_name).exists() {
            file_name = format!("{stem} ({i}){ext}");
            i += 1;
        }
    }
    let path = folder.join(&file_name);
    // No way out through links: the folder must resolve inside its root, and no link is written through.
    let inside = match (dir.canonicalize(), folder.canonicalize()) {
        (Ok(root), Ok(f)) => f.starts_with(root),
        _ => false,
    };
    if !inside || path.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{:?} leads outside the {ty} folder", rel.display().to_string()),
        );
    }
    if let Err(e) = tokio::fs::write(&path, &data).await {
        return error(StatusCode::INTERNAL_SERVER_ERROR, format!("{}: {e}", path.display()));
    }
    AxJson(json!({ "name": file_name, "subfolder": subfolder, "type": ty })).into_response()
}

// ---------------------------------------------------------------- what the server has

async fn object_info(State(app): State<App>) -> AxJson<Json> {
    AxJson((*app.object_info).clone())
}

async fn object_info_one(State(app): State<App>, UrlPath(kind): UrlPath<String>) -> AxJson<Json> {
    let mut out = serde_json::Map::new();
    if let Some(v) = app.object_info.get(&kind) {
        out.insert(kind, v.clone());
    }
    AxJson(Json::Object(out))
}

async fn system_stats(State(_): State<App>) -> AxJson<Json> {
    AxJson(tokio::task::spawn_blocking(info::system_stats).await.unwrap_or(Json::Null))
}

async fn embeddings(State(app): State<App>) -> AxJson<Json> {
    let names: Vec<String> = info::model_files(&app.ctx, "embeddings")
        .into_iter()
        .map(|n| n.rsplit_once('.').map_or(n.clone(), |(stem, _)| stem.to_string()))
        .collect();
    AxJson(json!(names))
}

async fn model_folders(State(_): State<App>) -> AxJson<Json> {
    AxJson(json!(info::FOLDERS))
}

async fn models_in(State(app): State<App>, UrlPath(folder): UrlPath<String>) -> Response {
    if !info::FOLDERS.contains(&folder.as_str()) {
        return error(StatusCode::NOT_FOUND, format!("no model folder {folder:?}"));
    }
    AxJson(json!(info::model_files(&app.ctx, &folder))).into_response()
}

// ---------------------------------------------------------------- WebSocket

#[derive(Deserialize)]
struct WsQuery {
    #[serde(rename = "clientId")]
    client_id: Option<String>,
}

async fn ws(State(app): State<App>, Query(q): Query<WsQuery>, headers: HeaderMap, up: WebSocketUpgrade) -> Response {
    let _ = headers;
    let sid = q.client_id.filter(|s| !s.is_empty()).unwrap_or_else(new_id);
    up.on_upgrade(move |socket| client(socket, app, sid))
}

/// Sends the client its `status` (with its `sid`), then every event for it or for all, until it goes.
async fn client(mut socket: WebSocket, app: App, sid: String) {
    let mut events = app.events.subscribe();
    let Frame::Text(hello) = status(&app.queue, Some(&sid)).frame else { return };
    if socket.send(Message::Text(hello.into())).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Ok(ev) if ev.client.as_deref().is_none_or(|c| c == sid) => {
                    let msg = match ev.frame {
                        Frame::Text(t) => Message::Text(t.into()),
                        Frame::Binary(b) => Message::Binary(b.into()),
                    };
                    if socket.send(msg).await.is_err() {
                        return;
                    }
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}
