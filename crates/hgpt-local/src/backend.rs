//! [`LocalBackend`]: runs cached models in this process.
//!
//! Models load on first use (once, however many requests arrive together),
//! stay loaded while they fit the memory budget (the least recently used are
//! unloaded first), and run one request at a time each on a blocking thread,
//! so concurrent requests queue instead of multiplying memory.

use crate::error::LocalError;
use crate::files::ModelCache;
use crate::pipeline::{self, ModelKind, Pipeline};
use async_trait::async_trait;
use candle_core::Device;
use hgpt_core::backend::{
    Availability, InferenceBackend, InferenceError, InferenceRequest, ProgressFn, StepProgressFn,
};
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{OnceCell, Semaphore};

/// Settings of the local backend.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Where models are cached.
    pub cache: ModelCache,
    /// Bytes of weights kept loaded at most (0: no limit).
    pub memory_budget_bytes: u64,
    /// Where tensors live.
    pub device: Device,
    /// Downloading models that are not cached on first use (`None`: never,
    /// e.g. offline).
    pub pull: Option<AutoPull>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            cache: ModelCache::from_env(),
            memory_budget_bytes: 0,
            device: crate::device::best_device(),
            pull: None,
        }
    }
}

/// How models missing from the cache are downloaded on first use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoPull {
    /// The largest download of one model, in bytes.
    pub max_bytes: u64,
    /// The Hub endpoint, when not huggingface.co (`HF_ENDPOINT`).
    pub endpoint: Option<String>,
    /// The Hub token, for gated models.
    pub token: Option<String>,
}

/// The pipeline a request needs: one per model and task family.
type Key = (String, TaskKind);

fn key(model: &str, task: TaskKind) -> Key {
    let family = match task {
        TaskKind::SentenceSimilarity => TaskKind::FeatureExtraction,
        other => other,
    };
    (model.to_string(), family)
}

/// A loaded pipeline and its request queue.
struct Loaded {
    pipeline: Arc<dyn Pipeline>,
    queue: Semaphore,
    bytes: u64,
    last_used: AtomicU64,
}

type Slot = Arc<OnceCell<Arc<Loaded>>>;

/// A model that is loaded, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedModel {
    /// Model id.
    pub model: String,
    /// The task family it was loaded for.
    pub task: TaskKind,
    /// Bytes of weights.
    pub bytes: u64,
}

/// Runs cached models in-process.
pub struct LocalBackend {
    config: LocalConfig,
    slots: Mutex<HashMap<Key, Slot>>,
    /// One lock per model being downloaded, so a model downloads once.
    pulls: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// What uncached models are, by their config on the Hub.
    hub_kinds: Mutex<HashMap<String, Option<ModelKind>>>,
    clock: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LocalBackend {
    /// A backend over the given cache.
    pub fn new(config: LocalConfig) -> Self {
        Self {
            config,
            slots: Mutex::new(HashMap::new()),
            pulls: Mutex::new(HashMap::new()),
            hub_kinds: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
        }
    }

    /// The model cache.
    pub fn cache(&self) -> &ModelCache {
        &self.config.cache
    }

    /// Whether the model's files are cached (or it is loaded) and a local
    /// family runs it for this task.
    pub fn can_serve(&self, task: TaskKind, model: &str) -> Result<(), String> {
        if !pipeline::supports(task) {
            return Err(format!("hgpt has no local pipeline for {task}"));
        }
        if !self.is_cached(model) {
            return Err(format!(
                "not in the local cache ({}); fetch it with `hgpt models pull {model}`",
                self.config.cache.path().display()
            ));
        }
        let files = self.config.cache.model(model);
        ModelKind::read(&files)
            .and_then(|kind| pipeline::family_for(task, model, &kind))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// What an uncached model is, from its `config.json` on the Hub (asked
    /// once per process); `None` when the Hub cannot tell.
    async fn hub_kind(&self, model: &str, pull: &AutoPull) -> Option<ModelKind> {
        if let Some(known) = lock(&self.hub_kinds).get(model) {
            return known.clone();
        }
        let (cache, id) = (self.config.cache.clone(), model.to_string());
        let (endpoint, token) = (pull.endpoint.clone(), pull.token.clone());
        let kind = tokio::task::spawn_blocking(move || {
            crate::pull::hub_model_kind(&cache, &id, endpoint, token)
        })
        .await
        .ok()
        .and_then(|fetched| {
            fetched
                .inspect_err(|e| tracing::debug!("cannot tell what {model} is: {e}"))
                .ok()
        });
        lock(&self.hub_kinds).insert(model.to_string(), kind.clone());
        kind
    }

    fn is_cached(&self, model: &str) -> bool {
        self.is_loaded(model) || pipeline::is_complete(&self.config.cache.model(model))
    }

    /// Download the model into the cache unless it is there (once, however
    /// many tasks ask at the same time), within the download limit.
    pub async fn pull_if_missing(
        &self,
        model: &str,
        progress: ProgressFn<'_>,
    ) -> Result<(), LocalError> {
        if self.is_cached(model) {
            return Ok(());
        }
        let Some(pull) = self.config.pull.clone() else {
            return Ok(());
        };
        let gate = lock(&self.pulls)
            .entry(model.to_string())
            .or_default()
            .clone();
        let _turn = gate.lock().await;
        if self.is_cached(model) {
            return Ok(());
        }
        let (cache, id) = (self.config.cache.clone(), model.to_string());
        let (sender, mut updates) = tokio::sync::mpsc::unbounded_channel();
        let download = tokio::task::spawn_blocking(move || {
            crate::pull::pull_within(
                &cache,
                &id,
                pull.endpoint,
                pull.token,
                pull.max_bytes,
                &mut |p| {
                    let _ = sender.send(p);
                },
            )
        });
        while let Some(update) = updates.recv().await {
            progress(update);
        }
        let outcome = download.await;
        lock(&self.pulls).remove(model);
        outcome
            .map_err(|e| LocalError::Compute(format!("the download crashed: {e}")))?
            .map(|snapshot| {
                tracing::info!("downloaded {model} into {}", snapshot.display());
            })
    }

    /// Whether any pipeline of the model is loaded.
    pub fn is_loaded(&self, model: &str) -> bool {
        lock(&self.slots)
            .iter()
            .any(|((m, _), slot)| m == model && slot.initialized())
    }

    /// The loaded models, most recently used first.
    pub fn loaded(&self) -> Vec<LoadedModel> {
        let mut loaded: Vec<(u64, LoadedModel)> = lock(&self.slots)
            .iter()
            .filter_map(|((model, task), slot)| {
                let entry = slot.get()?;
                Some((
                    entry.last_used.load(Ordering::Relaxed),
                    LoadedModel {
                        model: model.clone(),
                        task: *task,
                        bytes: entry.bytes,
                    },
                ))
            })
            .collect();
        loaded.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
        loaded.into_iter().map(|(_, m)| m).collect()
    }

    /// Load (or find loaded) the pipeline for a model and task.
    pub async fn pipeline(
        &self,
        task: TaskKind,
        model: &str,
    ) -> Result<Arc<dyn Pipeline>, LocalError> {
        Ok(self.loaded_entry(task, model).await?.pipeline.clone())
    }

    async fn loaded_entry(&self, task: TaskKind, model: &str) -> Result<Arc<Loaded>, LocalError> {
        let key = key(model, task);
        let slot = lock(&self.slots).entry(key.clone()).or_default().clone();
        let loaded = slot
            .get_or_try_init(|| async {
                let files = self.config.cache.model(model);
                let device = self.config.device.clone();
                let pipeline =
                    tokio::task::spawn_blocking(move || pipeline::load(task, &files, &device))
                        .await
                        .map_err(|e| LocalError::Compute(format!("loading crashed: {e}")))??;
                let bytes = pipeline.weight_bytes();
                self.make_room(&key, bytes)?;
                Ok::<_, LocalError>(Arc::new(Loaded {
                    pipeline: Arc::from(pipeline),
                    queue: Semaphore::new(1),
                    bytes,
                    last_used: AtomicU64::new(0),
                }))
            })
            .await;
        match loaded {
            Ok(entry) => {
                entry.last_used.store(
                    self.clock.fetch_add(1, Ordering::Relaxed) + 1,
                    Ordering::Relaxed,
                );
                Ok(entry.clone())
            }
            Err(error) => {
                // Forget the failed attempt so a later request (after a pull) retries.
                let mut slots = lock(&self.slots);
                if slots.get(&key).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                    slots.remove(&key);
                }
                Err(error)
            }
        }
    }

    /// Unload least recently used models until `bytes` more fit the budget.
    fn make_room(&self, incoming: &Key, bytes: u64) -> Result<(), LocalError> {
        let budget = self.config.memory_budget_bytes;
        if budget == 0 {
            return Ok(());
        }
        if bytes > budget {
            return Err(LocalError::Unsupported(format!(
                "{} needs {} MiB of weights, more than the local memory budget of {} MiB",
                incoming.0,
                bytes / (1 << 20),
                budget / (1 << 20)
            )));
        }
        let mut slots = lock(&self.slots);
        let mut unloaded = false;
        loop {
            let used: u64 = slots
                .values()
                .filter_map(|s| s.get())
                .map(|e| e.bytes)
                .sum();
            if used + bytes <= budget {
                break;
            }
            let victim = slots
                .iter()
                .filter(|(k, s)| *k != incoming && s.initialized())
                .min_by_key(|(_, s)| s.get().map_or(0, |e| e.last_used.load(Ordering::Relaxed)))
                .map(|(k, _)| k.clone());
            match victim {
                // In-flight requests keep their `Arc` until they finish.
                Some(victim) => {
                    tracing::info!("unloading {} to stay within the memory budget", victim.0);
                    slots.remove(&victim);
                    unloaded = true;
                }
                None => break,
            }
        }
        drop(slots);
        if unloaded {
            // The weights of the models unloaded go back to the system (a
            // request still running on one frees it when it ends; the next
            // eviction's trim returns that too).
            crate::device::release_freed_memory();
        }
        Ok(())
    }

    /// Run a request, downloading and loading the model first if needed.
    pub async fn run(&self, request: &InferenceRequest) -> Result<InferenceOutput, LocalError> {
        self.run_with_progress(request, &|_| {}).await
    }

    /// [`Self::run`], reporting the model's steps while it runs.
    pub async fn run_with_progress(
        &self,
        request: &InferenceRequest,
        progress: StepProgressFn<'_>,
    ) -> Result<InferenceOutput, LocalError> {
        self.pull_if_missing(&request.model, &|_| {}).await?;
        let entry = self.loaded_entry(request.task, &request.model).await?;
        let _turn = entry
            .queue
            .acquire()
            .await
            .map_err(|_| LocalError::Compute("the model was unloaded".into()))?;
        let pipeline = entry.pipeline.clone();
        let (task, args) = (request.task, request.args.clone());
        let (sender, mut steps) = tokio::sync::mpsc::unbounded_channel();
        let running = tokio::task::spawn_blocking(move || {
            pipeline.run_with_progress(task, &args, &|step| {
                let _ = sender.send(step);
            })
        });
        while let Some(step) = steps.recv().await {
            progress(step);
        }
        running
            .await
            .map_err(|e| LocalError::Compute(format!("the model crashed: {e}")))?
    }
}

fn to_inference_error(model: &str, error: LocalError) -> InferenceError {
    match error {
        LocalError::BadInput { task, message } => InferenceError::BadInput { task, message },
        LocalError::MissingFiles { .. }
        | LocalError::TooLarge { .. }
        | LocalError::Unsupported(_) => InferenceError::Unsupported(error.to_string()),
        LocalError::Load { .. } | LocalError::Compute(_) => InferenceError::Server {
            model: model.to_string(),
            status: 500,
            message: error.to_string(),
        },
    }
}

#[async_trait]
impl InferenceBackend for LocalBackend {
    fn endpoint(&self, _model: &str) -> String {
        "local".to_string()
    }

    fn runs_task(&self, task: TaskKind) -> bool {
        pipeline::supports(task)
    }

    async fn availability(&self, task: TaskKind, model: &str) -> Availability {
        match (self.can_serve(task, model), &self.config.pull) {
            (Ok(()), _) => Availability::Available,
            (Err(_), Some(pull)) if pipeline::supports(task) && !self.is_cached(model) => {
                // Offer it only if its config says a local family runs it.
                let kind = self.hub_kind(model, pull).await;
                match kind.map(|kind| pipeline::family_for(task, model, &kind)) {
                    Some(Err(unsupported)) => Availability::Unavailable(unsupported.to_string()),
                    Some(Ok(_)) | None => Availability::Pullable(format!(
                        "not cached; downloaded on first use if under {} MiB",
                        pull.max_bytes / (1 << 20)
                    )),
                }
            }
            (Err(reason), _) => Availability::Unavailable(reason),
        }
    }

    async fn prepare(
        &self,
        _task: TaskKind,
        model: &str,
        progress: ProgressFn<'_>,
    ) -> Result<(), InferenceError> {
        self.pull_if_missing(model, progress)
            .await
            .map_err(|e| to_inference_error(model, e))
    }

    async fn infer(&self, request: &InferenceRequest) -> Result<InferenceOutput, InferenceError> {
        self.run(request)
            .await
            .map_err(|e| to_inference_error(&request.model, e))
    }

    async fn infer_with_progress(
        &self,
        request: &InferenceRequest,
        progress: StepProgressFn<'_>,
    ) -> Result<InferenceOutput, InferenceError> {
        self.run_with_progress(request, progress)
            .await
            .map_err(|e| to_inference_error(&request.model, e))
    }
}
