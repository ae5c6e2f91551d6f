//! Load benchmark of `hgpt serve` (`cargo bench -p hgpt-server --bench load`).
//!
//! For each N (default 100 and 1000; `HGPT_BENCH_RUNS="100,1000"` overrides):
//! a fresh server on 127.0.0.1:0 with a real SQLite store in a temp dir and
//! zero-latency in-process fakes (scripted controller, canned backend), the
//! pipeline's generated files written by `LocalMedia` to a temp dir
//! (`HGPT_BENCH_MEDIA=memory`: kept in memory by the test kit's
//! `MemoryMedia`, which also skips drawing boxes, to leave the disk out),
//! limits sized so that the whole burst is admitted.
//! The client fires N concurrent `POST /v1/runs` over loopback HTTP (at most
//! `HGPT_BENCH_CONNECTIONS`, default 256, POSTs and as many event streams in
//! flight), follows every run on its event stream `GET /v1/runs/{id}/events`
//! to its end, then reads every run back with `GET /v1/runs/{id}` and checks
//! the store itself.
//!
//! Reported per N: throughput (runs completed per second, from the first
//! POST to the end of the last event stream), server overhead per run (p50
//! and p99 of `finished_at_ms - created_at_ms` of the stored run: with
//! zero-latency fakes that is the server and pipeline alone, queueing
//! included; split into queue wait and execution), the POST latency seen by
//! the client, the peak resident memory of the process (VmHWM, reset before
//! each N; client and server share the process), and whether every accepted
//! run reached a terminal state in the store. The exit status is non-zero
//! when a check fails: a run missing or unfinished in the store, a run
//! rejected or failed, or an event stream that is malformed.

use futures::stream::{self, StreamExt};
use hgpt_core::backend::MediaStore;
use hgpt_core::catalog::Catalog;
use hgpt_core::pipeline::{Pipeline, PipelineConfig};
use hgpt_core::prompt::Prompts;
use hgpt_media::{LocalMedia, MediaConfig};
use hgpt_server::{RunLimits, ServerConfig, ServerError, serve};
use hgpt_store::{RunState, Store};
use hgpt_testkit::hf::sample_png;
use hgpt_testkit::inproc::{FakeBackend, MemoryMedia, ScriptedLlm};
use serde_json::{Value, json};
use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::{JoinHandle, JoinSet};

type BoxError = Box<dyn Error + Send + Sync>;

/// Four tasks in three levels, with generated-resource dependencies: two
/// image tasks on the input, speech from the caption, recognition of the
/// speech.
const PLAN: &str = r#"[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}},
{"task": "object-detection", "id": 1, "dep": [-1], "args": {"image": "/a.jpg"}},
{"task": "text-to-speech", "id": 2, "dep": [0], "args": {"text": "<GENERATED>-0"}},
{"task": "automatic-speech-recognition", "id": 3, "dep": [2], "args": {"audio": "<GENERATED>-2"}}]"#;

/// Runs executing at once on the server.
const MAX_RUNNING: usize = 64;

/// Longest any one HTTP exchange may take before it counts as a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// How long the store may lag behind the event streams before the check
/// fails.
const STORE_DEADLINE: Duration = Duration::from_secs(10);

/// The benchmark's settings, from the environment.
struct Settings {
    runs: Vec<usize>,
    connections: usize,
    /// The pipeline's media in memory instead of on disk.
    memory_media: bool,
}

impl Settings {
    fn from_env() -> Result<Self, BoxError> {
        let runs = match std::env::var("HGPT_BENCH_RUNS") {
            Ok(text) => text
                .split(',')
                .map(|n| n.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("HGPT_BENCH_RUNS={text:?}: {e}"))?,
            Err(_) => vec![100, 1000],
        };
        if runs.is_empty() || runs.contains(&0) {
            return Err("HGPT_BENCH_RUNS must list positive numbers".into());
        }
        let connections = match std::env::var("HGPT_BENCH_CONNECTIONS") {
            Ok(text) => text
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("HGPT_BENCH_CONNECTIONS={text:?}: not a positive number"))?,
            Err(_) => 256,
        };
        let memory_media = match std::env::var("HGPT_BENCH_MEDIA").as_deref() {
            Err(_) | Ok("local") => false,
            Ok("memory") => true,
            Ok(other) => {
                return Err(format!("HGPT_BENCH_MEDIA={other:?}: use local or memory").into());
            }
        };
        Ok(Self {
            runs,
            connections,
            memory_media,
        })
    }
}

/// A server under test, in its own temp dir.
struct Server {
    url: String,
    data_dir: PathBuf,
    llm: Arc<ScriptedLlm>,
    backend: Arc<FakeBackend>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<(), ServerError>>,
    _root: tempfile::TempDir,
}

impl Server {
    async fn start(max_queued: usize, memory_media: bool) -> Result<Self, BoxError> {
        let root = tempfile::tempdir()?;
        let media_root = root.path().join("media");
        std::fs::create_dir_all(&media_root)?;
        std::fs::write(media_root.join("a.jpg"), sample_png())?;
        let media = MediaConfig {
            media_root,
            out_dir: root.path().join("out"),
            ..MediaConfig::default()
        };
        let data_dir = root.path().join("data");
        let llm = Arc::new(ScriptedLlm::with_plan(PLAN));
        let backend = Arc::new(FakeBackend::new(Duration::ZERO));
        let pipeline_media: Arc<dyn MediaStore> = if memory_media {
            Arc::new(MemoryMedia::with_files([(
                "/a.jpg".to_string(),
                sample_png(),
            )]))
        } else {
            Arc::new(LocalMedia::new(media.clone())?)
        };
        let pipeline = Pipeline::new(
            llm.clone(),
            backend.clone(),
            pipeline_media,
            Arc::new(Catalog::builtin()?),
            Arc::new(Prompts::default()),
            PipelineConfig::default(),
        );
        let store = Store::open(&data_dir)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let config = ServerConfig {
            limits: RunLimits {
                max_running: MAX_RUNNING,
                max_queued,
                shutdown_grace: Duration::from_secs(5),
            },
            media,
            ..ServerConfig::default()
        };
        let (shutdown, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(
            listener,
            Arc::new(pipeline),
            store,
            config,
            async move {
                let _ = stopped.await;
            },
        ));
        Ok(Self {
            url,
            data_dir,
            llm,
            backend,
            shutdown: Some(shutdown),
            handle,
            _root: root,
        })
    }

    /// Stop and wait until every run is in the store.
    async fn stop(&mut self) -> Result<(), BoxError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        (&mut self.handle).await??;
        Ok(())
    }
}

/// What the client shares between its tasks.
struct Client {
    http: reqwest::Client,
    base: String,
    posts: Semaphore,
    streams: Semaphore,
}

/// How one run went, seen from the client.
enum ClientRun {
    Accepted(Accepted),
    Rejected,
    Error(String),
}

struct Accepted {
    id: String,
    post_latency: Duration,
    stream: Result<StreamCheck, String>,
    ended: Instant,
}

/// A well-formed event stream: its length and the terminal state it ended
/// with.
struct StreamCheck {
    events: usize,
    terminal: RunState,
}

/// POST a run, then follow its event stream to the end.
async fn one_run(client: Arc<Client>, n: usize) -> ClientRun {
    let body = json!({"messages": [{"role": "user",
        "content": format!("describe /a.jpg, find its objects and read the caption aloud (#{n})")}]});
    let (id, post_latency) = {
        let Ok(_permit) = client.posts.acquire().await else {
            return ClientRun::Error("the POST semaphore closed".into());
        };
        let started = Instant::now();
        let response = match client
            .http
            .post(format!("{}/v1/runs", client.base))
            .json(&body)
            .send()
            .await
        {
            Ok(response) => response,
            Err(e) => return ClientRun::Error(format!("POST /v1/runs: {e}")),
        };
        let status = response.status();
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return ClientRun::Rejected;
        }
        let text = match response.text().await {
            Ok(text) => text,
            Err(e) => return ClientRun::Error(format!("POST /v1/runs: reading the body: {e}")),
        };
        if status != reqwest::StatusCode::ACCEPTED {
            return ClientRun::Error(format!("POST /v1/runs: {status}: {text}"));
        }
        let latency = started.elapsed();
        let id = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string));
        match id {
            Some(id) => (id, latency),
            None => return ClientRun::Error(format!("POST /v1/runs: no id in {text}")),
        }
    };
    let stream = match client.streams.acquire().await {
        Ok(_permit) => follow(&client, &id).await,
        Err(_) => Err("the stream semaphore closed".into()),
    };
    ClientRun::Accepted(Accepted {
        id,
        post_latency,
        stream,
        ended: Instant::now(),
    })
}

/// Read a run's whole event stream (it closes after the terminal event).
async fn follow(client: &Client, id: &str) -> Result<StreamCheck, String> {
    let response = client
        .http
        .get(format!("{}/v1/runs/{id}/events", client.base))
        .send()
        .await
        .map_err(|e| format!("events of {id}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("events of {id}: {status}"));
    }
    let text = response
        .text()
        .await
        .map_err(|e| format!("events of {id}: reading: {e}"))?;
    check_stream(&text).map_err(|e| format!("events of {id}: {e}"))
}

/// Parse server-sent events and check the run's log: ids 1, 2, ... in
/// order, `state: queued` first, a terminal `state` last and only last.
fn check_stream(text: &str) -> Result<StreamCheck, String> {
    let mut count = 0usize;
    let mut terminal = None;
    for block in text.split("\n\n") {
        let (mut id, mut kind, mut data) = (None, None, String::new());
        for line in block.lines() {
            if let Some(value) = line.strip_prefix("id:") {
                id = value.trim().parse::<usize>().ok();
            } else if let Some(value) = line.strip_prefix("event:") {
                kind = Some(value.trim().to_string());
            } else if let Some(value) = line.strip_prefix("data:") {
                data.push_str(value.strip_prefix(' ').unwrap_or(value));
            }
        }
        if data.is_empty() {
            continue; // keep-alive comments
        }
        count += 1;
        if id != Some(count) {
            return Err(format!("event {count} has id {id:?}"));
        }
        if let Some(state) = terminal {
            return Err(format!("event {count} after the terminal state {state}"));
        }
        if kind.as_deref() != Some("state") {
            if count == 1 {
                return Err(format!("the first event is {kind:?}, not a state"));
            }
            continue;
        }
        let data: Value =
            serde_json::from_str(&data).map_err(|e| format!("event {count}: {e}: {data}"))?;
        let state = data
            .get("state")
            .and_then(Value::as_str)
            .and_then(|s| RunState::from_str(s).ok())
            .ok_or_else(|| format!("event {count}: no state in {data}"))?;
        if count == 1 && state != RunState::Queued {
            return Err(format!("the first state is {state}"));
        }
        if state.is_terminal() {
            terminal = Some(state);
        }
    }
    match terminal {
        Some(terminal) => Ok(StreamCheck {
            events: count,
            terminal,
        }),
        None => Err(format!(
            "the stream ended after {count} events without a terminal state"
        )),
    }
}

/// Times of one run as the server stored them, in milliseconds.
struct Timing {
    total: u64,
    queued: u64,
    executing: u64,
}

/// `GET /v1/runs/{id}`: the run's timings, once it has ended.
async fn timing(client: &Client, id: &str) -> Result<Timing, String> {
    let response = client
        .http
        .get(format!("{}/v1/runs/{id}", client.base))
        .send()
        .await
        .map_err(|e| format!("GET run {id}: {e}"))?;
    let status = response.status();
    let row: Value = response
        .json()
        .await
        .map_err(|e| format!("GET run {id}: {status}: {e}"))?;
    let field = |name: &str| row.get(name).and_then(Value::as_u64);
    match (
        field("created_at_ms"),
        field("started_at_ms"),
        field("finished_at_ms"),
    ) {
        (Some(created), Some(started), Some(finished)) => Ok(Timing {
            total: finished.saturating_sub(created),
            queued: started.saturating_sub(created),
            executing: finished.saturating_sub(started),
        }),
        _ => Err(format!("GET run {id}: {status}: not finished: {row}")),
    }
}

/// What the store says about the accepted runs.
struct StoreCheck {
    missing: usize,
    unfinished: usize,
    counts: Vec<(RunState, u64)>,
    waited: Duration,
}

impl StoreCheck {
    fn total(&self) -> u64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }

    fn count(&self, state: RunState) -> u64 {
        self.counts
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n)
    }

    fn summary(&self) -> String {
        let parts: Vec<String> = self
            .counts
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        parts.join(", ")
    }
}

/// Look every accepted run up in the store (a second connection to the
/// server's file), waiting up to [`STORE_DEADLINE`] for the writer to catch
/// up.
fn check_store(store: &Store, ids: &[String]) -> Result<StoreCheck, BoxError> {
    let started = Instant::now();
    loop {
        let (mut missing, mut unfinished) = (0, 0);
        for id in ids {
            match store.run(id)? {
                Some(row) if row.state.is_terminal() => {}
                Some(_) => unfinished += 1,
                None => missing += 1,
            }
        }
        if (missing == 0 && unfinished == 0) || started.elapsed() > STORE_DEADLINE {
            return Ok(StoreCheck {
                missing,
                unfinished,
                counts: store.count_by_state()?,
                waited: started.elapsed(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The peak resident set of this process, in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Reset the peak resident set to the current one (Linux 4.0+).
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Nearest-rank percentile of sorted values.
fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One burst of `n` runs against a fresh server; prints its line and says
/// whether every check passed.
async fn burst(n: usize, settings: &Settings) -> Result<bool, BoxError> {
    let connections = settings.connections;
    let mut server = Server::start(n, settings.memory_media).await?;
    let reset = reset_peak_rss();
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(2 * connections)
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let client = Arc::new(Client {
        http,
        base: server.url.clone(),
        posts: Semaphore::new(connections),
        streams: Semaphore::new(connections),
    });

    let first_post = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..n {
        tasks.spawn(one_run(client.clone(), i));
    }
    let mut accepted = Vec::with_capacity(n);
    let (mut rejected, mut errors) = (0usize, Vec::new());
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            ClientRun::Accepted(run) => accepted.push(run),
            ClientRun::Rejected => rejected += 1,
            ClientRun::Error(e) => errors.push(e),
        }
    }
    let last_end = accepted.iter().map(|r| r.ended).max().unwrap_or(first_post);
    let wall = last_end.duration_since(first_post);

    let mut stream_errors = Vec::new();
    let (mut events, mut succeeded_streams) = (0usize, 0usize);
    for run in &accepted {
        match &run.stream {
            Ok(check) => {
                events += check.events;
                if check.terminal == RunState::Succeeded {
                    succeeded_streams += 1;
                }
            }
            Err(e) => stream_errors.push(e.clone()),
        }
    }
    let ids: Vec<String> = accepted.iter().map(|r| r.id.clone()).collect();

    let timings: Vec<Result<Timing, String>> = stream::iter(ids.iter().cloned())
        .map(|id| {
            let client = client.clone();
            async move { timing(&client, &id).await }
        })
        .buffer_unordered(connections)
        .collect()
        .await;
    let mut totals = Vec::with_capacity(timings.len());
    let mut queued = Vec::with_capacity(timings.len());
    let mut executing = Vec::with_capacity(timings.len());
    let mut timing_errors = Vec::new();
    for timing in timings {
        match timing {
            Ok(t) => {
                totals.push(t.total);
                queued.push(t.queued);
                executing.push(t.executing);
            }
            Err(e) => timing_errors.push(e),
        }
    }
    totals.sort_unstable();
    queued.sort_unstable();
    executing.sort_unstable();
    let mut post_latencies: Vec<Duration> = accepted.iter().map(|r| r.post_latency).collect();
    post_latencies.sort_unstable();

    let store = Store::open(&server.data_dir)?;
    let check = {
        let (store, ids) = (store.clone(), ids.clone());
        tokio::task::spawn_blocking(move || check_store(&store, &ids)).await??
    };
    let peak = peak_rss_kib();
    let llm_log_bytes: usize = server
        .llm
        .calls()
        .iter()
        .flat_map(|c| c.messages.iter().map(|m| m.content.len()))
        .sum();
    let backend_calls = server.backend.calls().len();

    server.stop().await?;
    let after = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.count_by_state()).await??
    };
    let changed_by_shutdown = after != check.counts;

    let all_terminal = check.missing == 0
        && check.unfinished == 0
        && check.total() == ids.len() as u64
        && !changed_by_shutdown;
    let ok = all_terminal
        && accepted.len() == n
        && rejected == 0
        && errors.is_empty()
        && stream_errors.is_empty()
        && timing_errors.is_empty();

    let throughput = accepted.len() as f64 / wall.as_secs_f64().max(f64::EPSILON);
    let peak_text = match peak {
        Some(kib) => format!(
            "{:.1} MiB{}",
            kib as f64 / 1024.0,
            if reset {
                ""
            } else {
                " (not reset since start)"
            }
        ),
        None => "unknown".to_string(),
    };
    println!(
        "N={n}: accepted {}/{n}, 429s {rejected}, errors {} | throughput {throughput:.1} runs/s \
         ({} runs in {:.3} s, first POST to last terminal event) | server overhead per run \
         (finished-created) p50 {} ms p99 {} ms [queue wait p50 {} p99 {} ms, execution p50 {} \
         p99 {} ms] | POST latency p50 {:.2} ms p99 {:.2} ms | peak RSS {peak_text} (one process: \
         server + client + fakes, whose call logs hold {:.1} MiB) | {:.1} events/run, {} backend \
         calls | store: {} | all {} accepted runs reached a terminal state in the store: {}",
        accepted.len(),
        errors.len() + stream_errors.len() + timing_errors.len(),
        accepted.len(),
        wall.as_secs_f64(),
        percentile(&totals, 0.50),
        percentile(&totals, 0.99),
        percentile(&queued, 0.50),
        percentile(&queued, 0.99),
        percentile(&executing, 0.50),
        percentile(&executing, 0.99),
        ms(percentile(&post_latencies, 0.50)),
        ms(percentile(&post_latencies, 0.99)),
        llm_log_bytes as f64 / (1024.0 * 1024.0),
        events as f64 / accepted.len().max(1) as f64,
        backend_calls,
        check.summary(),
        accepted.len(),
        if all_terminal { "yes" } else { "no" },
    );
    if !ok {
        eprintln!(
            "N={n}: FAILED: {} missing and {} unfinished in the store (after waiting {:.1} s), \
             {} runs stored in all, store changed by shutdown: {changed_by_shutdown}, \
             {} streams ended in succeeded",
            check.missing,
            check.unfinished,
            check.waited.as_secs_f64(),
            check.total(),
            succeeded_streams,
        );
        for e in errors
            .iter()
            .chain(&stream_errors)
            .chain(&timing_errors)
            .take(10)
        {
            eprintln!("  {e}");
        }
    }
    if check.count(RunState::Succeeded) != ids.len() as u64 {
        eprintln!(
            "N={n}: note: not every run succeeded ({}); the fakes should make every run succeed",
            check.summary()
        );
    }
    Ok(ok)
}

fn main() -> Result<ExitCode, BoxError> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let settings = Settings::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!(
        "hgpt serve load: zero-latency in-process fakes, a {}-task plan, generated files {}, \
         SQLite store on disk, max_running {MAX_RUNNING}, queue sized to N, {} client \
         connections for POSTs and as many for event streams, {} runtime worker threads \
         (client and server share them)",
        PLAN.matches("\"task\"").count(),
        if settings.memory_media {
            "in memory (MemoryMedia)"
        } else {
            "on disk (LocalMedia)"
        },
        settings.connections,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    let mut all_ok = true;
    for &n in &settings.runs {
        all_ok &= runtime.block_on(burst(n, &settings))?;
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
