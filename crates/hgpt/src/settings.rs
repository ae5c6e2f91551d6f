//! Settings: each from a flag, an environment variable or `hgpt.toml`, in that
//! order of precedence, then the default.

use anyhow::{Context, Result, bail};
use clap::Args;
use hgpt_core::routing::InferenceMode;
use hgpt_hf::ProviderOrder;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Flags shared by every command (each also read from its variable).
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsArgs {
    /// Config file [default: ./hgpt.toml when it exists].
    #[arg(long, global = true, env = "HGPT_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Base URL of any OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1.
    #[arg(long, global = true, env = "HGPT_LLM_BASE_URL", value_name = "URL")]
    pub llm_base_url: Option<String>,
    /// API key of the LLM server (falls back to OPENAI_API_KEY).
    #[arg(
        long,
        global = true,
        env = "HGPT_LLM_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub llm_api_key: Option<String>,
    /// Controller model name, e.g. gpt-4o-mini.
    #[arg(long, global = true, env = "HGPT_LLM_MODEL", value_name = "NAME")]
    pub llm_model: Option<String>,
    /// Context window of the controller model in tokens [default: known per model, else 8192; 4096 for the embedded controller].
    #[arg(long, global = true, env = "HGPT_LLM_CONTEXT", value_name = "TOKENS")]
    pub llm_context: Option<usize>,
    /// The embedded controller's model, used when no LLM server is configured: a .gguf file, or a Hub repo with an optional quantization or file (org/name, org/name:q4_k_m, org/name:file.gguf) [default: Qwen/Qwen2.5-1.5B-Instruct-GGUF:q4_k_m].
    #[arg(long, global = true, env = "HGPT_LLM_LOCAL", value_name = "MODEL")]
    pub llm_local: Option<String>,
    /// Never download anything (models, the controller); also HF_HUB_OFFLINE=1.
    #[arg(long, global = true, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub offline: Option<bool>,
    /// Base URL of a self-hosted server of the Hugging Face inference protocol for every remote model (requests go to {base}/models/{id}) [default: the Hugging Face router and its providers].
    #[arg(long, global = true, env = "HGPT_HF_BASE_URL", value_name = "URL")]
    pub hf_base_url: Option<String>,
    /// The Hugging Face router [default: https://router.huggingface.co].
    #[arg(long, global = true, env = "HGPT_HF_ROUTER_URL", value_name = "URL")]
    pub hf_router_url: Option<String>,
    /// Inference providers to use, in order, separated by ',' (hf-inference, fal-ai, replicate, together), or 'auto': every one, in the order of the Hub's mapping [default: auto].
    #[arg(long, global = true, env = "HGPT_HF_PROVIDERS", value_name = "LIST")]
    pub hf_providers: Option<String>,
    /// Hugging Face token.
    #[arg(
        long,
        global = true,
        env = "HF_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub hf_token: Option<String>,
    /// Catalog files (JSONL), separated by ':'; they replace the built-in catalog.
    #[arg(long, global = true, env = "HGPT_CATALOG", value_name = "PATHS")]
    pub catalog: Option<String>,
    /// Where paths named in requests resolve [default: current directory].
    #[arg(long, global = true, env = "HGPT_MEDIA_ROOT", value_name = "DIR")]
    pub media_root: Option<PathBuf>,
    /// Where generated files go [default: ./hgpt-out].
    #[arg(long, global = true, env = "HGPT_OUT_DIR", value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Candidate models shown to the LLM per task [default: 5].
    #[arg(long, global = true, env = "HGPT_CANDIDATES", value_name = "N")]
    pub candidates: Option<usize>,
    /// Characters of each model description in the selection prompt [default: 100].
    #[arg(
        long,
        global = true,
        env = "HGPT_DESCRIPTION_LENGTH",
        value_name = "CHARS"
    )]
    pub description_length: Option<usize>,
    /// Seconds one task's inference may take [default: 300].
    #[arg(long, global = true, env = "HGPT_TASK_TIMEOUT", value_name = "SECS")]
    pub task_timeout: Option<f64>,
    /// Seconds the execution stage of a run may take [default: 1800].
    #[arg(long, global = true, env = "HGPT_RUN_TIMEOUT", value_name = "SECS")]
    pub run_timeout: Option<f64>,
    /// Most tasks running at once [default: 8].
    #[arg(long, global = true, env = "HGPT_CONCURRENCY", value_name = "N")]
    pub concurrency: Option<usize>,
    /// Where models run: local, remote or hybrid [default: hybrid].
    #[arg(long, global = true, env = "HGPT_INFERENCE_MODE", value_name = "MODE")]
    pub inference_mode: Option<String>,
    /// Base URL of an hgpt model server (`hgpt serve-models`) to use as a local tier.
    #[arg(long, global = true, env = "HGPT_LOCAL_ENDPOINT", value_name = "URL")]
    pub local_endpoint: Option<String>,
    /// MiB of model weights kept loaded in-process at most [default: no limit].
    #[arg(long, global = true, env = "HGPT_LOCAL_MEMORY_MB", value_name = "MIB")]
    pub local_memory_mb: Option<u64>,
    /// MiB a model may take to download on first use in local or hybrid mode; 0 never downloads [default: 2048].
    #[arg(
        long,
        global = true,
        env = "HGPT_MODEL_DOWNLOAD_LIMIT_MB",
        value_name = "MIB"
    )]
    pub model_download_limit_mb: Option<u64>,
    /// Where `hgpt serve` keeps its run store [default: the platform's data directory, e.g. ~/.local/share/hgpt].
    #[arg(long, global = true, env = "HGPT_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Bearer token every API and file route of `hgpt serve` then requires.
    #[arg(
        long,
        global = true,
        env = "HGPT_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub api_token: Option<String>,
    /// Runs `hgpt serve` executes at once [default: 4].
    #[arg(long, global = true, env = "HGPT_MAX_RUNS", value_name = "N")]
    pub max_runs: Option<usize>,
    /// Runs `hgpt serve` keeps waiting beyond those; more get 429 [default: 64].
    #[arg(long, global = true, env = "HGPT_MAX_QUEUED", value_name = "N")]
    pub max_queued: Option<usize>,
    /// Days `hgpt serve` keeps ended runs in its store [default: forever].
    #[arg(long, global = true, env = "HGPT_KEEP_DAYS", value_name = "DAYS")]
    pub keep_days: Option<f64>,
    /// Origins whose web pages may call `hgpt serve` (CORS), separated by ',': exact origins or '*' [default: any with a token, else pages served from loopback].
    #[arg(long, global = true, env = "HGPT_CORS_ORIGINS", value_name = "ORIGINS")]
    pub cors_origins: Option<String>,
    /// Allow http(s) inputs on private, loopback and link-local addresses.
    #[arg(long, global = true, env = "HGPT_ALLOW_PRIVATE_URLS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub allow_private_urls: Option<bool>,
}

/// The `hgpt.toml` file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    llm: LlmSection,
    #[serde(default)]
    huggingface: HfSection,
    #[serde(default)]
    catalog: CatalogSection,
    #[serde(default)]
    media: MediaSection,
    #[serde(default)]
    selection: SelectionSection,
    #[serde(default)]
    execution: ExecutionSection,
    #[serde(default)]
    prompts: PromptsSection,
    #[serde(default)]
    inference: InferenceSection,
    #[serde(default)]
    server: ServerSection,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    bind: Option<String>,
    data_dir: Option<PathBuf>,
    api_token: Option<String>,
    max_runs: Option<usize>,
    max_queued: Option<usize>,
    max_upload_mb: Option<u64>,
    shutdown_grace_secs: Option<f64>,
    #[serde(default)]
    cors_origins: Vec<String>,
    keep_days: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InferenceSection {
    mode: Option<String>,
    local_endpoint: Option<String>,
    local_memory_mb: Option<u64>,
    model_download_limit_mb: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LlmSection {
    base_url: Option<String>,
    api_key: Option<String>,
    model: Option<String>,
    context_window: Option<usize>,
    temperature: Option<f32>,
    local: Option<String>,
    tokenizer: Option<PathBuf>,
    top_p: Option<f32>,
    seed: Option<u64>,
    repeat_penalty: Option<f32>,
    max_tokens: Option<usize>,
    prompt_cache_dir: Option<PathBuf>,
    prompt_cache: Option<bool>,
    timeout_secs: Option<f64>,
    max_retries: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HfSection {
    base_url: Option<String>,
    router_url: Option<String>,
    providers: Option<ProvidersSetting>,
    /// A provider's own key: that provider is called directly with it.
    #[serde(default)]
    provider_keys: BTreeMap<String, String>,
    /// A provider's own API base URL (a proxy), used with its key.
    #[serde(default)]
    provider_urls: BTreeMap<String, String>,
    mapping_ttl_secs: Option<f64>,
    job_timeout_secs: Option<f64>,
    token: Option<String>,
    timeout_secs: Option<f64>,
    max_retries: Option<u32>,
    max_loading_wait_secs: Option<f64>,
    /// Per-model base URLs (a dedicated endpoint or a model server).
    #[serde(default)]
    endpoints: BTreeMap<String, String>,
}

/// `providers = "auto"` or `providers = ["fal-ai", ...]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ProvidersSetting {
    Word(String),
    List(Vec<String>),
}

/// The provider order from a setting: `auto`, or names hgpt can call.
fn provider_order(names: &[String]) -> Result<ProviderOrder> {
    if names.len() == 1 && names[0].eq_ignore_ascii_case("auto") {
        return Ok(ProviderOrder::Auto);
    }
    if names.is_empty() {
        bail!("huggingface.providers: name at least one provider, or \"auto\"");
    }
    for name in names {
        if !hgpt_hf::PROVIDER_NAMES.contains(&name.as_str()) {
            bail!(
                "huggingface.providers: unknown provider {name:?} (hgpt calls {} through the router)",
                hgpt_hf::PROVIDER_NAMES.join(", ")
            );
        }
    }
    Ok(ProviderOrder::Only(names.to_vec()))
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogSection {
    #[serde(default)]
    files: Vec<PathBuf>,
    /// Refuse a catalog with a line that is not an entry (instead of
    /// skipping the line with a warning).
    #[serde(default)]
    strict: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MediaSection {
    root: Option<PathBuf>,
    out_dir: Option<PathBuf>,
    allow_private_urls: Option<bool>,
    max_download_mb: Option<u64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectionSection {
    candidates: Option<usize>,
    considered: Option<usize>,
    max_description_length: Option<usize>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecutionSection {
    task_timeout_secs: Option<f64>,
    run_timeout_secs: Option<f64>,
    max_concurrency: Option<usize>,
    fallback_models: Option<usize>,
    stream_plan: Option<bool>,
}

/// Replacement prompt templates (inline text) and demonstration files (paths,
/// in the reference's JSON demo format).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptsSection {
    /// Planning system prompt (`{{task_types}}`).
    pub plan_system: Option<String>,
    /// Planning user template (`{{context}}`, `{{input}}`).
    pub plan_user: Option<String>,
    /// Planning demonstrations file.
    pub plan_demos: Option<PathBuf>,
    /// Selection system prompt.
    pub select_system: Option<String>,
    /// Selection user template (`{{input}}`, `{{task}}`, `{{candidates}}`).
    pub select_user: Option<String>,
    /// Selection demonstrations file.
    pub select_demos: Option<PathBuf>,
    /// Answer system prompt.
    pub answer_system: Option<String>,
    /// Answer user template (`{{input}}`, `{{results}}`).
    pub answer_user: Option<String>,
    /// Answer demonstrations file.
    pub answer_demos: Option<PathBuf>,
    /// System prompt of plain-chat answers.
    pub chat_system: Option<String>,
    /// Instruction for text tasks run on the controller (`{{task}}`, `{{instructions}}`, `{{text}}`).
    pub text_task: Option<String>,
}

/// Everything resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// LLM base URL, when configured.
    pub llm_base_url: Option<String>,
    /// LLM key.
    pub llm_api_key: Option<String>,
    /// LLM model, when configured.
    pub llm_model: Option<String>,
    /// Context window override.
    pub llm_context: Option<usize>,
    /// Sampling temperature.
    pub llm_temperature: Option<f32>,
    /// LLM call timeout.
    pub llm_timeout: Duration,
    /// The embedded controller's model (`None`: the default), used when no
    /// server is configured.
    pub llm_local: Option<String>,
    /// A tokenizer.json for the embedded model.
    pub llm_tokenizer: Option<PathBuf>,
    /// Nucleus sampling of the embedded controller.
    pub llm_top_p: f32,
    /// Sampling seed of the embedded controller.
    pub llm_seed: u64,
    /// Repeat penalty of the embedded controller (1: none).
    pub llm_repeat_penalty: f32,
    /// Token cap of one embedded generation.
    pub llm_max_tokens: usize,
    /// Where the embedded controller saves prefilled prompts (`None`: memory only).
    pub llm_prompt_cache_dir: Option<PathBuf>,
    /// Never download.
    pub offline: bool,
    /// LLM retries.
    pub llm_max_retries: u32,
    /// A self-hosted inference server for every remote model (`None`: the
    /// router and its providers).
    pub hf_base_url: Option<String>,
    /// The Hugging Face router.
    pub hf_router_url: String,
    /// The Hub whose API says which provider serves a model (`HF_ENDPOINT`).
    pub hf_hub_endpoint: String,
    /// Which providers, in which order.
    pub hf_providers: ProviderOrder,
    /// Providers' own keys.
    pub hf_provider_keys: BTreeMap<String, String>,
    /// Providers' own API base URLs.
    pub hf_provider_urls: BTreeMap<String, String>,
    /// How long a provider mapping is trusted.
    pub hf_mapping_ttl: Duration,
    /// Where provider mappings are cached.
    pub hf_mapping_cache_dir: PathBuf,
    /// How long a queued provider job may take.
    pub hf_job_timeout: Duration,
    /// Inference token.
    pub hf_token: Option<String>,
    /// Inference call timeout.
    pub hf_timeout: Duration,
    /// Inference retries.
    pub hf_max_retries: u32,
    /// Longest wait for a loading model.
    pub hf_max_loading_wait: Duration,
    /// Per-model endpoints.
    pub hf_endpoints: BTreeMap<String, String>,
    /// Catalog files; empty means the built-in catalog.
    pub catalog_files: Vec<PathBuf>,
    /// Whether a bad catalog line refuses the catalog (else it is skipped
    /// with a warning).
    pub catalog_strict: bool,
    /// Media root.
    pub media_root: PathBuf,
    /// Output directory.
    pub out_dir: PathBuf,
    /// Private URLs allowed.
    pub allow_private_urls: bool,
    /// Download cap in bytes.
    pub max_download_bytes: u64,
    /// Candidates per task.
    pub candidates: usize,
    /// Entries considered before availability checks.
    pub considered: usize,
    /// Description length in the selection prompt.
    pub description_length: usize,
    /// Per-task timeout.
    pub task_timeout: Duration,
    /// Per-run timeout.
    pub run_timeout: Duration,
    /// Concurrency cap.
    pub concurrency: usize,
    /// Fallback models per task.
    pub fallback_models: usize,
    /// Start tasks while the plan is still being written.
    pub stream_plan: bool,
    /// Prompt replacements.
    pub prompts: PromptsSection,
    /// Where models run.
    pub inference_mode: InferenceMode,
    /// A local model server, if any.
    pub local_endpoint: Option<String>,
    /// In-process weight budget in bytes (0: none).
    pub local_memory_bytes: u64,
    /// Largest download of a model on first use, in bytes (0: never download).
    pub model_download_limit_bytes: u64,
    /// `hgpt serve`'s address from the config file, if set.
    pub server_bind: Option<String>,
    /// The run store's directory.
    pub data_dir: PathBuf,
    /// The API token `hgpt serve` requires, if any.
    pub api_token: Option<String>,
    /// Runs executing at once.
    pub max_runs: usize,
    /// Runs waiting beyond those.
    pub max_queued: usize,
    /// Largest upload in bytes.
    pub max_upload_bytes: usize,
    /// How long shutdown lets running runs finish.
    pub shutdown_grace: Duration,
    /// Origins allowed to call the server from web pages (empty: the default).
    pub cors_origins: Vec<String>,
    /// How long ended runs are kept; `None`: forever.
    pub keep_runs_for: Option<Duration>,
}

/// The platform's directory for hgpt's data: `$XDG_DATA_HOME/hgpt` or
/// `~/.local/share/hgpt` on Linux and BSD, `~/Library/Application
/// Support/hgpt` on macOS, `%APPDATA%\hgpt` on Windows; `./hgpt-data` when
/// none of those is known.
fn default_data_dir(env: &dyn Env) -> PathBuf {
    let home = env.var("HOME").map(PathBuf::from);
    let base = if cfg!(windows) {
        env.var("APPDATA").map(PathBuf::from)
    } else if cfg!(target_os = "macos") {
        home.map(|h| h.join("Library").join("Application Support"))
    } else {
        env.var("XDG_DATA_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| home.map(|h| h.join(".local").join("share")))
    };
    base.map_or_else(|| PathBuf::from("hgpt-data"), |b| b.join("hgpt"))
}

/// The platform's cache directory for hgpt: `$XDG_CACHE_HOME/hgpt` or
/// `~/.cache/hgpt` (`~/Library/Caches/hgpt` on macOS, `%LOCALAPPDATA%\hgpt`
/// on Windows); `./hgpt-cache` when none of those is known.
fn default_cache_dir(env: &dyn Env) -> PathBuf {
    let home = env.var("HOME").map(PathBuf::from);
    let base = if cfg!(windows) {
        env.var("LOCALAPPDATA").map(PathBuf::from)
    } else if cfg!(target_os = "macos") {
        home.map(|h| h.join("Library").join("Caches"))
    } else {
        env.var("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| home.map(|h| h.join(".cache")))
    };
    base.map_or_else(|| PathBuf::from("hgpt-cache"), |b| b.join("hgpt"))
}

/// Environment lookups, injectable for tests.
pub trait Env {
    /// A variable's value.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// The longest timeout accepted (a year): beyond it deadlines overflow.
const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

fn seconds(value: f64, what: &str) -> Result<Duration> {
    if !(value > 0.0 && value <= MAX_SECONDS) {
        bail!("{what} must be a number of seconds above 0 and at most {MAX_SECONDS}, got {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

impl Settings {
    /// Resolve flags (which already include their environment variables),
    /// other variables, the config file and the defaults.
    pub fn resolve(args: &SettingsArgs, env: &dyn Env) -> Result<Self> {
        let (file, base_dir) = match &args.config {
            Some(path) => (
                load_file(path)?,
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
            ),
            None if Path::new("hgpt.toml").is_file() => {
                (load_file(Path::new("hgpt.toml"))?, PathBuf::new())
            }
            None => (ConfigFile::default(), PathBuf::new()),
        };
        let relative = |p: PathBuf| if p.is_absolute() { p } else { base_dir.join(p) };
        let catalog_files = match &args.catalog {
            Some(list) => list
                .split(':')
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .collect(),
            None => file.catalog.files.iter().cloned().map(relative).collect(),
        };
        let mut prompts = file.prompts.clone();
        for demos in [
            &mut prompts.plan_demos,
            &mut prompts.select_demos,
            &mut prompts.answer_demos,
        ] {
            *demos = demos.take().map(relative);
        }
        let llm_api_key = args
            .llm_api_key
            .clone()
            .or_else(|| env.var("OPENAI_API_KEY"))
            .or(file.llm.api_key.clone());
        let mut llm_base_url = args.llm_base_url.clone().or(file.llm.base_url.clone());
        let mut llm_model = args.llm_model.clone().or(file.llm.model.clone());
        let hf_token = args.hf_token.clone().or(file.huggingface.token.clone());
        let hf_router_url = args
            .hf_router_url
            .clone()
            .or(file.huggingface.router_url.clone())
            .unwrap_or_else(|| hgpt_hf::DEFAULT_ROUTER_URL.to_string());
        let router_chat = format!("{}/v1", hf_router_url.trim_end_matches('/'));
        if llm_base_url.is_none() && llm_api_key.is_some() {
            llm_base_url = Some("https://api.openai.com/v1".to_string());
            llm_model.get_or_insert_with(|| "gpt-4o-mini".to_string());
        } else if llm_base_url.is_none() && llm_model.is_some() && hf_token.is_some() {
            // A model named with no server and no OpenAI key: the Hugging
            // Face router's OpenAI-compatible chat, paid by HF_TOKEN.
            llm_base_url = Some(router_chat.clone());
        }
        let mut llm_api_key = llm_api_key;
        if llm_api_key.is_none()
            && llm_base_url
                .as_deref()
                .is_some_and(|url| url.trim_end_matches('/') == router_chat)
        {
            llm_api_key = hf_token.clone();
        }
        let settings = Self {
            llm_base_url,
            llm_api_key,
            llm_model,
            llm_context: args.llm_context.or(file.llm.context_window),
            llm_temperature: file.llm.temperature.or(Some(0.0)),
            llm_timeout: seconds(file.llm.timeout_secs.unwrap_or(120.0), "llm.timeout_secs")?,
            llm_local: args.llm_local.clone().or(file.llm.local.clone()),
            llm_tokenizer: file.llm.tokenizer.clone().map(relative),
            llm_top_p: file.llm.top_p.unwrap_or(1.0),
            llm_seed: file.llm.seed.unwrap_or(299_792_458),
            llm_repeat_penalty: file.llm.repeat_penalty.unwrap_or(1.0),
            llm_max_tokens: file.llm.max_tokens.unwrap_or(1024),
            llm_prompt_cache_dir: match file.llm.prompt_cache {
                Some(false) => None,
                _ => Some(
                    file.llm
                        .prompt_cache_dir
                        .clone()
                        .map(relative)
                        .unwrap_or_else(|| default_cache_dir(env).join("prompt-cache")),
                ),
            },
            offline: args.offline.unwrap_or_else(|| {
                env.var("HF_HUB_OFFLINE").is_some_and(|v| {
                    !matches!(v.to_ascii_lowercase().as_str(), "0" | "false" | "no")
                })
            }),
            llm_max_retries: file.llm.max_retries.unwrap_or(3),
            hf_base_url: args
                .hf_base_url
                .clone()
                .or(file.huggingface.base_url.clone()),
            hf_router_url,
            hf_hub_endpoint: env
                .var("HF_ENDPOINT")
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| hgpt_hf::DEFAULT_HUB_ENDPOINT.to_string()),
            hf_providers: match (&args.hf_providers, &file.huggingface.providers) {
                (Some(list), _) => provider_order(
                    &list
                        .split(',')
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>(),
                )?,
                (None, Some(ProvidersSetting::Word(word))) => {
                    provider_order(std::slice::from_ref(word))?
                }
                (None, Some(ProvidersSetting::List(list))) => provider_order(list)?,
                (None, None) => ProviderOrder::Auto,
            },
            hf_provider_keys: {
                let mut keys = file.huggingface.provider_keys.clone();
                for (provider, variable) in [
                    ("fal-ai", "FAL_KEY"),
                    ("replicate", "REPLICATE_API_TOKEN"),
                    ("together", "TOGETHER_API_KEY"),
                ] {
                    if let Some(key) = env.var(variable).filter(|k| !k.is_empty()) {
                        keys.entry(provider.to_string()).or_insert(key);
                    }
                }
                keys
            },
            hf_provider_urls: file.huggingface.provider_urls.clone(),
            hf_mapping_ttl: seconds(
                file.huggingface.mapping_ttl_secs.unwrap_or(6.0 * 3600.0),
                "huggingface.mapping_ttl_secs",
            )?,
            hf_mapping_cache_dir: default_cache_dir(env).join("provider-mappings"),
            hf_job_timeout: seconds(
                file.huggingface.job_timeout_secs.unwrap_or(600.0),
                "huggingface.job_timeout_secs",
            )?,
            hf_token,
            hf_timeout: seconds(
                file.huggingface.timeout_secs.unwrap_or(120.0),
                "huggingface.timeout_secs",
            )?,
            hf_max_retries: file.huggingface.max_retries.unwrap_or(3),
            hf_max_loading_wait: seconds(
                file.huggingface.max_loading_wait_secs.unwrap_or(120.0),
                "huggingface.max_loading_wait_secs",
            )?,
            hf_endpoints: file.huggingface.endpoints.clone(),
            catalog_files,
            catalog_strict: file.catalog.strict,
            media_root: args
                .media_root
                .clone()
                .or(file.media.root.clone().map(relative))
                .unwrap_or_else(|| PathBuf::from(".")),
            out_dir: args
                .out_dir
                .clone()
                .or(file.media.out_dir.clone().map(relative))
                .unwrap_or_else(|| PathBuf::from("hgpt-out")),
            allow_private_urls: args
                .allow_private_urls
                .or(file.media.allow_private_urls)
                .unwrap_or(false),
            max_download_bytes: file
                .media
                .max_download_mb
                .unwrap_or(50)
                .saturating_mul(1024 * 1024),
            candidates: args.candidates.or(file.selection.candidates).unwrap_or(5),
            considered: file.selection.considered.unwrap_or(10),
            description_length: args
                .description_length
                .or(file.selection.max_description_length)
                .unwrap_or(100),
            task_timeout: seconds(
                args.task_timeout
                    .or(file.execution.task_timeout_secs)
                    .unwrap_or(300.0),
                "task timeout",
            )?,
            run_timeout: seconds(
                args.run_timeout
                    .or(file.execution.run_timeout_secs)
                    .unwrap_or(1800.0),
                "run timeout",
            )?,
            concurrency: args
                .concurrency
                .or(file.execution.max_concurrency)
                .unwrap_or(8),
            fallback_models: file.execution.fallback_models.unwrap_or(1),
            stream_plan: file.execution.stream_plan.unwrap_or(true),
            prompts,
            inference_mode: match args.inference_mode.clone().or(file.inference.mode.clone()) {
                Some(mode) => mode.parse().map_err(anyhow::Error::msg)?,
                None => InferenceMode::Hybrid,
            },
            local_endpoint: args
                .local_endpoint
                .clone()
                .or(file.inference.local_endpoint.clone()),
            local_memory_bytes: args
                .local_memory_mb
                .or(file.inference.local_memory_mb)
                .unwrap_or(0)
                .saturating_mul(1 << 20),
            model_download_limit_bytes: args
                .model_download_limit_mb
                .or(file.inference.model_download_limit_mb)
                .unwrap_or(2048)
                .saturating_mul(1 << 20),
            server_bind: file.server.bind.clone(),
            data_dir: args
                .data_dir
                .clone()
                .or(file.server.data_dir.clone().map(relative))
                .unwrap_or_else(|| default_data_dir(env)),
            api_token: args
                .api_token
                .clone()
                .or(file.server.api_token.clone())
                .filter(|t| !t.trim().is_empty()),
            max_runs: args.max_runs.or(file.server.max_runs).unwrap_or(4),
            max_queued: args.max_queued.or(file.server.max_queued).unwrap_or(64),
            max_upload_bytes: usize::try_from(
                file.server
                    .max_upload_mb
                    .unwrap_or(25)
                    .saturating_mul(1 << 20),
            )
            .unwrap_or(usize::MAX),
            shutdown_grace: seconds(
                file.server.shutdown_grace_secs.unwrap_or(30.0),
                "server.shutdown_grace_secs",
            )?,
            cors_origins: match &args.cors_origins {
                Some(list) => list
                    .split(',')
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                    .map(str::to_string)
                    .collect(),
                None => file.server.cors_origins.clone(),
            },
            keep_runs_for: args
                .keep_days
                .or(file.server.keep_days)
                .map(|days| seconds(days * 86_400.0, "keep days"))
                .transpose()?,
        };
        if settings.candidates == 0 {
            bail!("candidates must be at least 1");
        }
        if settings.concurrency == 0 {
            bail!("concurrency must be at least 1");
        }
        if settings.max_runs == 0 {
            bail!("max runs must be at least 1");
        }
        Ok(settings)
    }
}

fn load_file(path: &Path) -> Result<ConfigFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    struct FakeEnv(Vec<(&'static str, &'static str)>);
    impl Env for FakeEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    fn config(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hgpt.toml");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        (dir, path)
    }

    #[test]
    fn flags_beat_the_file_which_beats_defaults() {
        let (_dir, path) = config(
            "[llm]\nbase_url = \"http://file/v1\"\nmodel = \"file-model\"\n[selection]\ncandidates = 3\n[execution]\nmax_concurrency = 2\nstream_plan = false\n",
        );
        let args = SettingsArgs {
            config: Some(path),
            llm_model: Some("flag-model".into()),
            ..Default::default()
        };
        let s = Settings::resolve(&args, &FakeEnv(vec![])).unwrap();
        assert_eq!(s.llm_model.as_deref(), Some("flag-model"));
        assert_eq!(s.llm_base_url.as_deref(), Some("http://file/v1"));
        assert_eq!(s.candidates, 3);
        assert_eq!(s.concurrency, 2);
        assert!(!s.stream_plan);
        assert_eq!(s.description_length, 100);
        assert_eq!(s.hf_base_url, None);
        assert_eq!(s.hf_router_url, "https://router.huggingface.co");
        assert_eq!(s.hf_providers, ProviderOrder::Auto);
    }

    #[test]
    fn inference_mode_from_flag_or_file() {
        let (_dir, path) = config(
            "[inference]\nmode = \"local\"\nlocal_memory_mb = 512\nmodel_download_limit_mb = 64\n",
        );
        let args = SettingsArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let s = Settings::resolve(&args, &FakeEnv(vec![])).unwrap();
        assert_eq!(s.inference_mode, InferenceMode::Local);
        assert_eq!(s.local_memory_bytes, 512 << 20);
        assert_eq!(s.model_download_limit_bytes, 64 << 20);
        let args = SettingsArgs {
            config: Some(path),
            inference_mode: Some("remote".into()),
            ..Default::default()
        };
        assert_eq!(
            Settings::resolve(&args, &FakeEnv(vec![]))
                .unwrap()
                .inference_mode,
            InferenceMode::Remote
        );
        let args = SettingsArgs {
            inference_mode: Some("gpu".into()),
            ..Default::default()
        };
        let err = Settings::resolve(&args, &FakeEnv(vec![])).unwrap_err();
        assert!(err.to_string().contains("unknown inference mode"), "{err}");
        let s = Settings::resolve(&SettingsArgs::default(), &FakeEnv(vec![])).unwrap();
        assert_eq!(s.inference_mode, InferenceMode::Hybrid);
    }

    #[test]
    fn openai_key_fallback_and_default_endpoint() {
        let s = Settings::resolve(
            &SettingsArgs::default(),
            &FakeEnv(vec![("OPENAI_API_KEY", "sk-x")]),
        )
        .unwrap();
        assert_eq!(s.llm_api_key.as_deref(), Some("sk-x"));
        assert_eq!(s.llm_base_url.as_deref(), Some("https://api.openai.com/v1"));
        let args = SettingsArgs {
            llm_api_key: Some("mine".into()),
            ..Default::default()
        };
        let s = Settings::resolve(&args, &FakeEnv(vec![("OPENAI_API_KEY", "sk-x")])).unwrap();
        assert_eq!(s.llm_api_key.as_deref(), Some("mine"));
    }

    #[test]
    fn a_model_and_an_hf_token_use_the_routers_chat() {
        let args = SettingsArgs {
            llm_model: Some("openai/gpt-oss-120b:cheapest".into()),
            hf_token: Some("hf_abc".into()),
            ..Default::default()
        };
        let s = Settings::resolve(&args, &FakeEnv(vec![])).unwrap();
        assert_eq!(
            s.llm_base_url.as_deref(),
            Some("https://router.huggingface.co/v1")
        );
        assert_eq!(s.llm_api_key.as_deref(), Some("hf_abc"));
        // An OpenAI key still means OpenAI.
        let s = Settings::resolve(&args, &FakeEnv(vec![("OPENAI_API_KEY", "sk-x")])).unwrap();
        assert_eq!(s.llm_base_url.as_deref(), Some("https://api.openai.com/v1"));
        // The router named explicitly takes the HF token as its key.
        let args = SettingsArgs {
            llm_base_url: Some("https://router.huggingface.co/v1/".into()),
            llm_model: Some("m".into()),
            hf_token: Some("hf_abc".into()),
            ..Default::default()
        };
        let s = Settings::resolve(&args, &FakeEnv(vec![])).unwrap();
        assert_eq!(s.llm_api_key.as_deref(), Some("hf_abc"));
        // No token: the embedded controller, as before.
        let args = SettingsArgs {
            llm_model: Some("m".into()),
            ..Default::default()
        };
        assert_eq!(
            Settings::resolve(&args, &FakeEnv(vec![]))
                .unwrap()
                .llm_base_url,
            None
        );
    }

    #[test]
    fn provider_order_and_keys() {
        let (_dir, path) = config(
            "[huggingface]\nproviders = [\"together\", \"fal-ai\"]\n[huggingface.provider_keys]\nreplicate = \"r8_file\"\n",
        );
        let args = SettingsArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let env = FakeEnv(vec![
            ("FAL_KEY", "fal_env"),
            ("REPLICATE_API_TOKEN", "r8_env"),
        ]);
        let s = Settings::resolve(&args, &env).unwrap();
        assert_eq!(
            s.hf_providers,
            ProviderOrder::Only(vec!["together".into(), "fal-ai".into()])
        );
        assert_eq!(s.hf_provider_keys["fal-ai"], "fal_env");
        assert_eq!(s.hf_provider_keys["replicate"], "r8_file", "the file wins");
        let flag = SettingsArgs {
            config: Some(path),
            hf_providers: Some("auto".into()),
            ..Default::default()
        };
        assert_eq!(
            Settings::resolve(&flag, &env).unwrap().hf_providers,
            ProviderOrder::Auto
        );
        let bad = SettingsArgs {
            hf_providers: Some("fal-ai, nosuch".into()),
            ..Default::default()
        };
        let err = format!("{:#}", Settings::resolve(&bad, &env).unwrap_err());
        assert!(err.contains("unknown provider \"nosuch\""), "{err}");
    }

    #[test]
    fn catalog_list_and_relative_paths() {
        let (dir, path) =
            config("[catalog]\nfiles = [\"a.jsonl\"]\n[prompts]\nplan_demos = \"demos.json\"\n");
        let s = Settings::resolve(
            &SettingsArgs {
                config: Some(path.clone()),
                ..Default::default()
            },
            &FakeEnv(vec![]),
        )
        .unwrap();
        assert_eq!(s.catalog_files, vec![dir.path().join("a.jsonl")]);
        assert_eq!(s.prompts.plan_demos, Some(dir.path().join("demos.json")));
        let args = SettingsArgs {
            config: Some(path),
            catalog: Some("x.jsonl:y.jsonl".into()),
            ..Default::default()
        };
        let s = Settings::resolve(&args, &FakeEnv(vec![])).unwrap();
        assert_eq!(
            s.catalog_files,
            vec![PathBuf::from("x.jsonl"), PathBuf::from("y.jsonl")]
        );
    }

    #[test]
    fn server_settings_from_flags_file_and_platform() {
        let (dir, path) = config(
            "[server]\nbind = \"0.0.0.0:9000\"\ndata_dir = \"runs\"\napi_token = \"t0k\"\nmax_runs = 2\nmax_upload_mb = 1\n",
        );
        let args = SettingsArgs {
            config: Some(path),
            max_queued: Some(7),
            keep_days: Some(0.5),
            cors_origins: Some("http://localhost:9999, https://chat.example.com".into()),
            ..SettingsArgs::default()
        };
        let settings = Settings::resolve(&args, &FakeEnv(vec![])).unwrap();
        assert_eq!(settings.server_bind.as_deref(), Some("0.0.0.0:9000"));
        assert_eq!(settings.data_dir, dir.path().join("runs"));
        assert_eq!(settings.api_token.as_deref(), Some("t0k"));
        assert_eq!((settings.max_runs, settings.max_queued), (2, 7));
        assert_eq!(settings.max_upload_bytes, 1 << 20);
        assert_eq!(settings.keep_runs_for, Some(Duration::from_secs(43_200)));
        assert_eq!(
            settings.cors_origins,
            ["http://localhost:9999", "https://chat.example.com"]
        );

        let defaults = Settings::resolve(
            &SettingsArgs::default(),
            &FakeEnv(vec![("HOME", "/home/u"), ("XDG_DATA_HOME", "/xdg")]),
        )
        .unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(defaults.data_dir, PathBuf::from("/xdg/hgpt"));
            let home_only = Settings::resolve(
                &SettingsArgs::default(),
                &FakeEnv(vec![("HOME", "/home/u")]),
            )
            .unwrap();
            assert_eq!(
                home_only.data_dir,
                PathBuf::from("/home/u/.local/share/hgpt")
            );
        }
        assert_eq!((defaults.max_runs, defaults.max_queued), (4, 64));
        assert_eq!(defaults.api_token, None);
        let zero = SettingsArgs {
            max_runs: Some(0),
            ..SettingsArgs::default()
        };
        assert!(Settings::resolve(&zero, &FakeEnv(vec![])).is_err());
    }

    #[test]
    fn bad_files_and_values_are_clear_errors() {
        let (_dir, path) = config("[llm]\nmodle = \"typo\"\n");
        let err = Settings::resolve(
            &SettingsArgs {
                config: Some(path),
                ..Default::default()
            },
            &FakeEnv(vec![]),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("modle"), "{err:#}");
        let args = SettingsArgs {
            task_timeout: Some(-1.0),
            ..Default::default()
        };
        assert!(Settings::resolve(&args, &FakeEnv(vec![])).is_err());
        let args = SettingsArgs {
            config: Some(PathBuf::from("/nonexistent/hgpt.toml")),
            ..Default::default()
        };
        assert!(
            format!(
                "{:#}",
                Settings::resolve(&args, &FakeEnv(vec![])).unwrap_err()
            )
            .contains("cannot read config file")
        );
    }
}
