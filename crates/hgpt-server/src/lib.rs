//! `hgpt serve`: hgpt over HTTP.
//!
//! - The reference system's API (`POST /hugginggpt`, `/tasks`, `/results`),
//!   so its clients work unchanged; CORS is on.
//! - The OpenAI chat API (`POST /v1/chat/completions`, streaming or not, and
//!   `GET /v1/models`; the model is `hugginggpt`).
//! - A runs API: `POST /v1/runs` answers at once with an id; the run's
//!   events stream from `GET /v1/runs/{id}/events` (server-sent events that
//!   a late or reconnecting client replays from `Last-Event-ID`).
//! - File upload (`POST /v1/files`) and serving (`GET /files/{path}`),
//!   confined to the media root and the output directory.
//! - `GET /healthz`, `GET /metrics` (Prometheus), and the web interface at `/`.
//!
//! Every run goes through [`runs::Runs`]: a bounded number run, a bounded
//! queue waits, and everything is written to the [`hgpt_store::Store`], so
//! a restarted server still shows every run (those cut off are marked
//! interrupted). Errors are JSON in the OpenAI shape.

#![warn(missing_docs)]

mod api;
mod conversation;
mod error;
mod files;
mod metrics;
mod runs;
mod ui;

pub use runs::RunLimits;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use error::ApiError;
use hgpt_core::pipeline::Pipeline;
use hgpt_media::{LocalMedia, MediaConfig};
use hgpt_store::Store;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// The model name the OpenAI API answers to.
pub const MODEL_NAME: &str = "hugginggpt";

/// The header that carries a run's id on synchronous routes.
pub const RUN_ID_HEADER: &str = "x-hgpt-run-id";

/// Settings of the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Concurrency, queue and shutdown limits of runs.
    pub limits: RunLimits,
    /// When set, every API and file route needs this bearer token.
    pub api_token: Option<String>,
    /// Largest JSON request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest uploaded file, in bytes.
    pub max_upload_bytes: usize,
    /// Where uploads are stored and files are served from (the pipeline's
    /// media settings).
    pub media: MediaConfig,
    /// Origins whose pages may call the API (CORS): exact origins such as
    /// `http://localhost:9999`, or `*` for any. Empty: any origin when a
    /// token is set (a page needs the token anyway), else only pages served
    /// from loopback addresses.
    pub cors_origins: Vec<String>,
    /// Ended runs older than this are deleted from the store (checked at
    /// start and every hour); `None` keeps every run.
    pub keep_runs_for: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            limits: RunLimits::default(),
            api_token: None,
            max_body_bytes: 4 << 20,
            max_upload_bytes: 25 << 20,
            media: MediaConfig::default(),
            cors_origins: Vec::new(),
            keep_runs_for: None,
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Listening or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The media folders are unusable.
    #[error("media folders: {0}")]
    Media(#[from] hgpt_core::backend::MediaError),
    /// The run store failed.
    #[error("run store: {0}")]
    Store(#[from] hgpt_store::StoreError),
    /// Another server holds the data directory.
    #[error(
        "another hgpt serve is using the run store in {0}; stop it or give this one another data directory"
    )]
    Locked(String),
}

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct AppState {
    pub runs: Arc<runs::Runs>,
    pub media: Arc<LocalMedia>,
    pub config: Arc<ServerConfig>,
    /// Uploads being received at once (each is held in memory).
    pub uploads: Arc<Semaphore>,
    /// Whether requests must name the server by a loopback host name (a
    /// loopback bind without a token: the defence against DNS rebinding).
    pub loopback_hosts_only: bool,
}

/// How long connections may stay open after the grace period of a shutdown.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(5);

/// Uploads received at once.
const CONCURRENT_UPLOADS: usize = 4;

/// Hold the data directory's lock file for as long as the server runs, so
/// that two servers never share one store (the second would mark the
/// first's live runs interrupted).
fn lock_data_dir(store: &Store) -> Result<Option<std::fs::File>, ServerError> {
    let Some(dir) = store.path().and_then(|p| p.parent()) else {
        return Ok(None);
    };
    let path = dir.join("hgpt.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(ServerError::Locked(dir.display().to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
    }
}

/// Serve on `listener` until `shutdown` completes; then refuse new runs,
/// interrupt queued ones, let running ones finish within the grace period
/// (or mark them interrupted) and return once every run is in the store.
pub async fn serve(
    listener: tokio::net::TcpListener,
    pipeline: Arc<Pipeline>,
    store: Store,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let _lock = lock_data_dir(&store)?;
    let media = Arc::new(LocalMedia::new(config.media.clone())?);
    let runs = runs::Runs::new(pipeline, store, config.limits)?;
    if let Some(keep) = config.keep_runs_for {
        tokio::spawn(retention(runs.clone(), keep));
    }
    let loopback_hosts_only =
        config.api_token.is_none() && listener.local_addr()?.ip().is_loopback();
    let grace = config.limits.shutdown_grace;
    let state = AppState {
        runs: runs.clone(),
        media,
        config: Arc::new(config),
        uploads: Arc::new(Semaphore::new(CONCURRENT_UPLOADS)),
        loopback_hosts_only,
    };
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let signal_runs = runs.clone();
    let signal = async move {
        shutdown.await;
        signal_runs.begin_shutdown();
        let _ = stopping.send(());
    };
    // Events are small writes: send each at once (no Nagle delay).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(signal);
    // Runs end within the grace period, and with them their event streams
    // and waiting requests; a client that still holds a connection open
    // (a half-sent request) is not waited for much longer.
    let deadline = async move {
        if stopped.await.is_ok() {
            tokio::time::sleep(grace + SHUTDOWN_LINGER).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = server => served?,
        () = deadline => tracing::warn!("connections still open after the shutdown grace period were closed"),
    }
    runs.shut_down().await;
    Ok(())
}

/// How often old runs are looked for.
const RETENTION_PERIOD: Duration = Duration::from_secs(3600);

/// Delete ended runs older than `keep`, now and every [`RETENTION_PERIOD`],
/// until the server stops.
async fn retention(runs: Arc<runs::Runs>, keep: Duration) {
    let stopping = runs.stopping();
    loop {
        let store = runs.store().clone();
        let cutoff = runs::now_ms().saturating_sub(keep.as_millis() as u64);
        match tokio::task::spawn_blocking(move || store.prune(Some(cutoff), None)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(deleted)) => {
                tracing::info!("deleted {deleted} runs older than the retention period")
            }
            Ok(Err(e)) => tracing::error!("cannot delete old runs: {e}"),
            Err(e) => tracing::error!("the retention task failed: {e}"),
        }
        tokio::select! {
            () = tokio::time::sleep(RETENTION_PERIOD) => {}
            () = stopping.cancelled() => return,
        }
    }
}

/// Every route, with auth, CORS and body limits.
fn router(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    let upload_limit = state.config.max_upload_bytes;
    let cors = CorsLayer::new()
        .allow_origin(cors_origins(&state.config))
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers(Any)
        .expose_headers([HeaderName::from_static(RUN_ID_HEADER)]);
    let uploads = Router::new()
        .route("/v1/files", axum::routing::post(files::upload))
        .layer(DefaultBodyLimit::max(upload_limit.saturating_add(64 << 10)));
    api::routes()
        .layer(DefaultBodyLimit::max(body_limit))
        .merge(uploads)
        .route("/files/{*path}", axum::routing::get(files::serve_file))
        .merge(ui::routes())
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), check_host))
        .layer(cors)
        .with_state(state)
}

/// Whether `origin` (`scheme://host[:port]`) is a page served from this
/// machine's loopback addresses.
fn is_loopback_origin(origin: &[u8]) -> bool {
    let Ok(origin) = std::str::from_utf8(origin) else {
        return false;
    };
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https") && is_loopback_host(rest)
}

/// Whether a `host[:port]` names a loopback address.
fn is_loopback_host(host_and_port: &str) -> bool {
    let host = match host_and_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_and_port.split(':').next().unwrap_or_default(),
    };
    let host = host.to_ascii_lowercase();
    host == "localhost"
        || host.ends_with(".localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The CORS origins of the settings (see [`ServerConfig::cors_origins`]).
fn cors_origins(config: &ServerConfig) -> AllowOrigin {
    if config.cors_origins.iter().any(|o| o == "*")
        || (config.cors_origins.is_empty() && config.api_token.is_some())
    {
        return AllowOrigin::any();
    }
    if config.cors_origins.is_empty() {
        return AllowOrigin::predicate(|origin: &HeaderValue, _| {
            is_loopback_origin(origin.as_bytes())
        });
    }
    AllowOrigin::list(
        config
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
    )
}

/// On a loopback bind without a token, refuse requests that name the
/// server by anything but a loopback host: a web page that rebinds its own
/// domain to 127.0.0.1 would otherwise reach the API as same-origin.
async fn check_host(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state.loopback_hosts_only {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()));
        if !host.is_some_and(is_loopback_host) {
            return ApiError::forbidden(
                "this server answers only requests addressed to localhost (set HGPT_API_TOKEN \
                 to serve it under other names)",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// Routes open without a token: the web interface's files and the health
/// check (the interface asks for the token itself).
fn is_public(path: &str) -> bool {
    path == "/" || path == "/healthz" || path.starts_with("/assets/")
}

/// Compare without stopping at the first difference.
fn same_token(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token a request carries: `Authorization: Bearer`, else `access_token`
/// in the query.
fn request_token(request: &Request) -> Option<String> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION)
        && let Ok(value) = value.to_str()
        && let Some(token) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
    {
        return Some(token.trim().to_string());
    }
    let query = request.uri().query()?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == "access_token").then(|| percent_decode(value))
    })
}

/// Decode `%XX` escapes and `+` of a query value.
pub(crate) fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(expected) = state.config.api_token.as_deref() else {
        return next.run(request).await;
    };
    if request.method() == Method::OPTIONS || is_public(request.uri().path()) {
        return next.run(request).await;
    }
    match request_token(&request) {
        Some(token) if same_token(&token, expected) => next.run(request).await,
        _ => ApiError::unauthorized().into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abd", "abc"));
        assert!(!same_token("ab", "abc"));
        assert!(!same_token("", "abc"));
    }

    #[test]
    fn loopback_origins_and_hosts() {
        for origin in [
            "http://localhost:9999",
            "http://127.0.0.1:8004",
            "https://[::1]:3000",
            "http://app.localhost",
        ] {
            assert!(is_loopback_origin(origin.as_bytes()), "{origin}");
        }
        for origin in [
            "http://evil.example",
            "http://127.0.0.1.evil.example",
            "http://localhost.evil.example:80",
            "null",
            "file://",
        ] {
            assert!(!is_loopback_origin(origin.as_bytes()), "{origin}");
        }
        assert!(is_loopback_host("127.0.0.1:8004"));
        assert!(is_loopback_host("LOCALHOST"));
        assert!(!is_loopback_host("rebound.example:8004"));
    }

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(percent_decode("a%2Fb+c"), "a/b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
