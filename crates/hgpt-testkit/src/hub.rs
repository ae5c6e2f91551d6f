//! A fake Hugging Face Hub for download tests: `GET /api/models/{id}/revision/main`
//! lists a repository's files and `GET /{id}/resolve/main/{file}` serves them
//! with the headers the Hub sends (ETag, X-Repo-Commit, ranged responses).

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;

/// The commit every fake repository is at.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Default)]
struct Hub {
    repos: BTreeMap<String, BTreeMap<String, Bytes>>,
    requests: Mutex<Vec<String>>,
}

/// A running fake Hub. Dropping it stops it.
pub struct FakeHub {
    url: String,
    hub: Arc<Hub>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeHub {
    /// Serve `repos`: repository id -> file name -> content.
    pub async fn start(repos: BTreeMap<String, BTreeMap<String, Bytes>>) -> FakeHub {
        let hub = Arc::new(Hub {
            repos,
            requests: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/api/models/{*rest}", get(info))
            .route("/{*rest}", get(resolve))
            .with_state(hub.clone());
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(e) => panic!("cannot bind a loopback port: {e}"),
        };
        let url = match listener.local_addr() {
            Ok(addr) => format!("http://{addr}"),
            Err(e) => panic!("no local address: {e}"),
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeHub { url, hub, task }
    }

    /// The endpoint to use as `HF_ENDPOINT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every path requested, in order.
    pub fn requests(&self) -> Vec<String> {
        self.hub
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

/// The id of the MiniLM test model.
pub const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// The files hgpt needs of the MiniLM test model, read from
/// [`crate::models::minilm_snapshot`], to serve as [`MINILM`].
pub fn minilm_files() -> BTreeMap<String, Bytes> {
    let snapshot = crate::models::minilm_snapshot();
    [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        "1_Pooling/config.json",
    ]
    .into_iter()
    .map(|name| match std::fs::read(snapshot.join(name)) {
        Ok(data) => (name.to_string(), Bytes::from(data)),
        Err(e) => panic!("cannot read {name} of the MiniLM test model: {e}"),
    })
    .collect()
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn record(hub: &Hub, path: String) {
    if let Ok(mut requests) = hub.requests.lock() {
        requests.push(path);
    }
}

async fn info(State(hub): State<Arc<Hub>>, Path(rest): Path<String>) -> Response {
    record(&hub, format!("/api/models/{rest}"));
    let Some(id) = rest.strip_suffix("/revision/main") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match hub.repos.get(id) {
        Some(files) => {
            let siblings: Vec<_> = files
                .keys()
                .map(|f| serde_json::json!({"rfilename": f}))
                .collect();
            axum::Json(serde_json::json!({"id": id, "sha": COMMIT, "siblings": siblings}))
                .into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": "Repository not found"})),
        )
            .into_response(),
    }
}

async fn resolve(
    State(hub): State<Arc<Hub>>,
    Path(rest): Path<String>,
    headers: HeaderMap,
) -> Response {
    record(&hub, format!("/{rest}"));
    let Some((id, file)) = rest.split_once("/resolve/main/") else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(content) = hub.repos.get(id).and_then(|files| files.get(file)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let etag = format!("\"{:016x}{}\"", content.len(), file.len());
    let total = content.len();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| {
            let start: usize = a.parse().ok()?;
            let end: usize = if b.is_empty() {
                total.saturating_sub(1)
            } else {
                b.parse().ok()?
            };
            Some((start, end.min(total.saturating_sub(1))))
        });
    let builder = Response::builder()
        .header(header::ETAG, etag)
        .header("x-repo-commit", COMMIT)
        .header(header::ACCEPT_RANGES, "bytes");
    let response = match range {
        Some((start, end)) if start <= end && end < total => builder
            .status(StatusCode::PARTIAL_CONTENT)
            .header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{total}"),
            )
            .body(Body::from(content.slice(start..=end))),
        _ => builder
            .status(StatusCode::OK)
            .body(Body::from(content.clone())),
    };
    response.unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
