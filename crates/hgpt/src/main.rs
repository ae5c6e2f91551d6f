//! `hgpt`: HuggingGPT in one binary. A thin layer over the library crates:
//! parse the command line, resolve settings, run, print.

mod app;
mod progress;
mod runs;
mod settings;
mod sync;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hgpt_core::backend::ChatMessage;
use hgpt_core::pipeline::Pipeline;
use hgpt_core::record::{RunEvent, RunRecord};
use hgpt_core::task::TaskName;
use settings::{ProcessEnv, Settings, SettingsArgs};
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use tokio::sync::mpsc;

/// HuggingGPT in one binary: an LLM plans AI tasks, picks Hugging Face models
/// for them, runs them and answers from the results.
#[derive(Debug, Parser)]
#[command(name = "hgpt", version, about)]
struct Cli {
    #[command(flatten)]
    settings: SettingsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a request through all four stages; the answer streams to stdout.
    Run {
        /// The request, e.g. "describe /a.jpg and read the description aloud".
        request: String,
        /// Print one JSON run record instead of the streamed answer.
        #[arg(long)]
        json: bool,
    },
    /// Plan a request (stage 1 only) and print the plan as a JSON list.
    Plan {
        /// The request.
        request: String,
    },
    /// A multi-turn chat on stdin; earlier turns are the context of later ones.
    Chat,
    /// Serve hgpt over HTTP: the reference's API (/hugginggpt, /tasks,
    /// /results), the OpenAI chat API, the runs API with live events, and
    /// the web interface at /. Runs are kept in the store in --data-dir.
    Serve {
        /// Address to listen on [default: 127.0.0.1:8004, or [server] bind in hgpt.toml].
        #[arg(long, env = "HGPT_BIND")]
        bind: Option<String>,
    },
    /// Runs kept by `hgpt serve` in its store (--data-dir).
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Serve local models over the Hugging Face inference protocol
    /// (`POST /models/{id}`, `GET /health`, `GET /status/{id}`, `GET /models`).
    ServeModels {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8005")]
        bind: String,
        /// Models to serve (repeatable); none: every cached model.
        #[arg(long = "model", value_name = "ID")]
        models: Vec<String>,
    },
    /// The model catalog.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// The most recent runs, newest first.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Continue after this cursor (printed under a full page).
        #[arg(long)]
        before: Option<String>,
        /// Print JSON (`{"data": [...], "next": cursor}`).
        #[arg(long)]
        json: bool,
    },
    /// Delete ended runs (with their events) from the store.
    #[command(group = clap::ArgGroup::new("which").required(true).multiple(true))]
    Prune {
        /// Those that ended more than this many days ago.
        #[arg(long, value_name = "DAYS", group = "which")]
        older_than: Option<f64>,
        /// All but the newest N runs.
        #[arg(long, value_name = "N", group = "which")]
        keep: Option<usize>,
    },
    /// One run as JSON: its state and the `hgpt run --json` record.
    Show {
        /// The run id.
        id: String,
        /// Include the run's events.
        #[arg(long)]
        events: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// List the catalog, ranked as selection ranks it.
    List {
        /// Only this task type (any common spelling).
        #[arg(long)]
        task: Option<String>,
        /// Print a JSON list.
        #[arg(long)]
        json: bool,
    },
    /// Build the catalog from the Hub API: the most downloaded models of each
    /// task type with downloads, likes, tags, the providers serving them and
    /// a description from the model card, written to the data directory and
    /// used from then on (unless catalog files are configured).
    Sync {
        /// Only this task type (repeatable) [default: every task type].
        #[arg(long = "task", value_name = "TASK")]
        tasks: Vec<String>,
        /// Models per task type.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Download a model's configs, tokenizer and safetensors weights into the
    /// Hugging Face cache (HF_HUB_CACHE or HF_HOME; from HF_ENDPOINT).
    Pull {
        /// The model id, e.g. sentence-transformers/all-MiniLM-L6-v2.
        id: String,
    },
}

fn main() -> ExitCode {
    // SAFETY: first thing in main, before the runtime or any thread starts.
    unsafe { hgpt_local::device::pin_cpu_threads() };
    hgpt_local::device::keep_freed_memory();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HGPT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        // The reader went away (`hgpt models list | head`): stop quietly, as
        // command-line tools do.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `error` comes from writing to a pipe whose reader has closed it.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `text` and a newline on stdout; an error (a closed pipe among them)
/// returns instead of panicking as `println!` does.
fn print_line(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let settings = Settings::resolve(&cli.settings, &ProcessEnv)?;
    match cli.command {
        Command::Run { request, json } => {
            let pipeline = app::pipeline(&settings).await?;
            let record = run_once(&pipeline, &request, &[], !json).await?;
            if json {
                print_line(&serde_json::to_string_pretty(&record)?)?;
            }
            Ok(exit_code(&record))
        }
        Command::Plan { request } => {
            let pipeline = app::pipeline(&settings).await?;
            let outcome = pipeline.plan(&request, &[]).await?;
            match outcome.plan {
                Ok(plan) => {
                    for warning in &plan.warnings {
                        eprintln!("note: {warning}");
                    }
                    print_line(&serde_json::to_string_pretty(&plan.to_json())?)?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}\nthe planner answered:\n{}", outcome.raw);
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Chat => chat(&app::pipeline(&settings).await?).await,
        Command::Serve { bind } => serve(&settings, bind).await,
        Command::Runs {
            command:
                RunsCommand::List {
                    limit,
                    before,
                    json,
                },
        } => runs::list(&settings, limit, before.as_deref(), json),
        Command::Runs {
            command: RunsCommand::Show { id, events },
        } => runs::show(&settings, &id, events),
        Command::Runs {
            command: RunsCommand::Prune { older_than, keep },
        } => runs::prune(&settings, older_than, keep),
        Command::ServeModels { bind, models } => serve_models(&settings, &bind, models).await,
        Command::Models {
            command: ModelsCommand::List { task, json },
        } => models_list(&settings, task.as_deref(), json),
        Command::Models {
            command: ModelsCommand::Pull { id },
        } => pull(&settings, id).await,
        Command::Models {
            command: ModelsCommand::Sync { tasks, limit },
        } => sync::sync(&settings, &tasks, limit)
            .await
            .map(|_| ExitCode::SUCCESS),
    }
}

fn exit_code(record: &RunRecord) -> ExitCode {
    match &record.error {
        None => ExitCode::SUCCESS,
        Some(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Run one request, showing progress on a terminal and optionally streaming
/// the answer to stdout.
async fn run_once(
    pipeline: &Pipeline,
    request: &str,
    history: &[ChatMessage],
    stream_answer: bool,
) -> Result<RunRecord> {
    let (sink, mut events) = mpsc::unbounded_channel::<RunEvent>();
    let show_progress = std::io::stderr().is_terminal();
    let printer = async move {
        let mut progress = show_progress.then(progress::Progress::new);
        let mut stdout = std::io::stdout();
        while let Some(event) = events.recv().await {
            match (progress.as_mut(), &event) {
                (Some(progress), _) => progress.on_event(&event),
                // No terminal: one line per download, for logs.
                (
                    None,
                    RunEvent::ModelDownload {
                        id,
                        model,
                        done_bytes: 0,
                        total_bytes,
                    },
                ) => eprintln!(
                    "task #{id}: downloading {model} ({} MiB) into the model cache",
                    total_bytes.div_ceil(1 << 20)
                ),
                (None, _) => {}
            }
            if let (true, RunEvent::AnswerDelta { text }) = (stream_answer, &event) {
                let _ = stdout.write_all(text.as_bytes());
                let _ = stdout.flush();
            }
        }
        if let Some(progress) = progress.as_mut() {
            progress.finish();
        }
        if stream_answer {
            let _ = writeln!(stdout);
        }
    };
    let run = async move { pipeline.run(request, history, Some(sink)).await };
    let (record, ()) = tokio::join!(run, printer);
    Ok(record?)
}

async fn chat(pipeline: &Pipeline) -> Result<ExitCode> {
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("hgpt chat: type a request; an empty line, 'exit' or Ctrl-D ends.");
    }
    let mut history: Vec<ChatMessage> = Vec::new();
    loop {
        if interactive {
            eprint!("\nyou> ");
            let _ = std::io::stderr().flush();
        }
        let mut line = String::new();
        if std::io::stdin()
            .read_line(&mut line)
            .context("cannot read stdin")?
            == 0
        {
            break;
        }
        let request = line.trim();
        if request.is_empty() && interactive || matches!(request, "exit" | "quit") {
            break;
        }
        if request.is_empty() {
            continue;
        }
        match run_once(pipeline, request, &history, true).await {
            Ok(record) => {
                if let Some(error) = &record.error {
                    eprintln!("error: {error}");
                }
                history.push(ChatMessage::user(request));
                history.push(ChatMessage::assistant(record.answer));
            }
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn models_list(settings: &Settings, task: Option<&str>, json: bool) -> Result<ExitCode> {
    let catalog = app::catalog(settings)?;
    let entries = match task {
        Some(name) => {
            let name = TaskName::parse(name);
            if let TaskName::Unknown(unknown) = &name {
                anyhow::bail!("unknown task type {unknown:?}");
            }
            catalog.ranked(&name)
        }
        None => catalog.ranked_all(),
    };
    let mut out = std::io::stdout().lock();
    if json {
        let listed: Vec<serde_json::Value> = entries
            .iter()
            .map(|entry| {
                let mut value = serde_json::to_value(entry)?;
                value["local_family"] = local_family(entry).into();
                Ok(value)
            })
            .collect::<Result<_>>()?;
        writeln!(out, "{}", serde_json::to_string_pretty(&listed)?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let runs_on: Vec<String> = entries.iter().map(|e| runs_on(e)).collect();
    let width = entries.iter().map(|e| e.id.len()).max().unwrap_or(2).max(2);
    let task_width = entries
        .iter()
        .map(|e| e.task.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let runs_width = runs_on.iter().map(String::len).max().unwrap_or(7).max(7);
    writeln!(
        out,
        "{:<width$}  {:<task_width$}  {:>10}  {:<runs_width$}  DESCRIPTION",
        "ID", "TASK", "DOWNLOADS", "RUNS ON"
    )?;
    for (entry, runs_on) in entries.into_iter().zip(runs_on) {
        let downloads = entry
            .downloads
            .map_or_else(|| "-".to_string(), |d| d.to_string());
        writeln!(
            out,
            "{:<width$}  {:<task_width$}  {:>10}  {:<runs_width$}  {}",
            entry.id,
            entry.task,
            downloads,
            runs_on,
            entry.short_description(60)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The local family that runs a catalog entry, when its config is known.
fn local_family(entry: &hgpt_core::catalog::CatalogEntry) -> Option<&'static str> {
    let TaskName::Known(task) = entry.task_name() else {
        return None;
    };
    hgpt_local::pipeline::family_name(task, &entry.architectures, entry.model_type.as_deref())
}

/// Where a catalog entry can run: `local (family)` and the providers that
/// serve it, as far as the catalog knows; `-` when it knows neither.
fn runs_on(entry: &hgpt_core::catalog::CatalogEntry) -> String {
    let mut places: Vec<String> = Vec::new();
    if let Some(family) = local_family(entry) {
        places.push(format!("local ({family})"));
    }
    places.extend(entry.providers.iter().cloned());
    if places.is_empty() {
        "-".to_string()
    } else {
        places.join(", ")
    }
}

async fn pull(settings: &Settings, id: String) -> Result<ExitCode> {
    let multi = indicatif::MultiProgress::new();
    if is_gguf_repo(&id) {
        let spec = hgpt_controller::ModelSpec::parse(&id).map_err(anyhow::Error::msg)?;
        let hgpt_controller::ModelSpec::Hub { repo, pick } = spec else {
            bail!("{id} is a file, not a Hub repository");
        };
        let access = app::hub_access(settings);
        let path = tokio::task::spawn_blocking(move || {
            hgpt_controller::source::download(&repo, &pick, &access, app::FileProgress::new(&multi))
        })
        .await
        .context("the download crashed")?
        .with_context(|| format!("cannot pull {id}"))?;
        eprintln!("{id} is in {}", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let cache = hgpt_local::ModelCache::from_env();
    let token = settings.hf_token.clone();
    let target = id.clone();
    let snapshot = tokio::task::spawn_blocking(move || {
        hgpt_local::pull::pull(
            &cache,
            &target,
            std::env::var("HF_ENDPOINT").ok(),
            token,
            || app::FileProgress::new(&multi),
        )
    })
    .await
    .context("the download crashed")?
    .with_context(|| format!("cannot pull {id}"))?;
    let weights = match hgpt_local::ModelFiles::from_dir(&id, &snapshot).weight_file() {
        Some(file) if file.ends_with(".bin") => {
            format!(
                "{file}, a PyTorch state dict: it has no safetensors; hgpt reads the pickle without running it"
            )
        }
        Some(file) => file,
        None => "none hgpt reads".to_string(),
    };
    eprintln!("{id} is in {} (weights: {weights})", snapshot.display());
    Ok(ExitCode::SUCCESS)
}

/// Whether `hgpt models pull` should fetch one GGUF file (a repository whose
/// name says GGUF, or an id with a `:quantization` or `:file.gguf`).
fn is_gguf_repo(id: &str) -> bool {
    id.contains(':') || id.to_ascii_lowercase().contains("gguf")
}

async fn serve_models(settings: &Settings, bind: &str, models: Vec<String>) -> Result<ExitCode> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let address = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| bind.to_string());
    // The model server serves what is cached; `hgpt models pull` adds to it.
    let backend = std::sync::Arc::new(app::local_backend(settings, false));
    eprintln!(
        "serving {} from {} on http://{address} (Ctrl-C stops)",
        if models.is_empty() {
            "every cached model".to_string()
        } else {
            models.join(", ")
        },
        backend.cache().path().display()
    );
    let config = hgpt_model_server::ModelServerConfig {
        models,
        ..Default::default()
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    hgpt_model_server::serve(listener, backend, config, shutdown)
        .await
        .context("the model server failed")?;
    Ok(ExitCode::SUCCESS)
}

/// Completes on Ctrl-C or, on Unix, SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn serve(settings: &Settings, bind: Option<String>) -> Result<ExitCode> {
    let bind = bind
        .or_else(|| settings.server_bind.clone())
        .unwrap_or_else(|| "127.0.0.1:8004".to_string());
    let pipeline = std::sync::Arc::new(app::pipeline(settings).await?);
    let store = hgpt_store::Store::open(&settings.data_dir).with_context(|| {
        format!(
            "cannot open the run store in {}",
            settings.data_dir.display()
        )
    })?;
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .with_context(|| format!("cannot listen on {bind}"))?;
    let address = listener.local_addr().context("no local address")?;
    if settings.api_token.is_none() && !address.ip().is_loopback() {
        eprintln!(
            "warning: listening on {address} without an API token; anyone who can reach it can \
             run requests (set HGPT_API_TOKEN)"
        );
    }
    eprintln!("hgpt serve: listening on http://{address}");
    eprintln!("hgpt serve: controller {}", pipeline.controller_name());
    eprintln!(
        "runs are stored in {}; Ctrl-C stops (running runs get {} s to finish)",
        store.path().map_or_else(
            || settings.data_dir.display().to_string(),
            |p| p.display().to_string()
        ),
        settings.shutdown_grace.as_secs()
    );
    let config = hgpt_server::ServerConfig {
        limits: hgpt_server::RunLimits {
            max_running: settings.max_runs,
            max_queued: settings.max_queued,
            shutdown_grace: settings.shutdown_grace,
        },
        api_token: settings.api_token.clone(),
        max_upload_bytes: settings.max_upload_bytes,
        media: app::media_config(settings),
        cors_origins: settings.cors_origins.clone(),
        keep_runs_for: settings.keep_runs_for,
        ..hgpt_server::ServerConfig::default()
    };
    hgpt_server::serve(listener, pipeline, store, config, shutdown_signal())
        .await
        .context("the server failed")?;
    eprintln!("hgpt serve: stopped; every run is in the store");
    Ok(ExitCode::SUCCESS)
}
