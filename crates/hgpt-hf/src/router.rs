//! Hosted inference as the Hub serves it: the router in front of many
//! providers. Which provider serves a model comes from the Hub's provider
//! mapping ([`ProviderDirectory`]); the call goes to the first enabled
//! provider that serves the task, and to the next one when it fails.

use crate::directory::ProviderDirectory;
use crate::hub::HubApi;
use crate::hub::valid_hub_id;
use crate::mapping::{MappingStatus, ModelProviders, ProviderEntry};
use crate::providers::{Call, Provider, provider};
use crate::request::is_local_only;
use crate::{HfBackend, HfConfig, HfError, normalized_base};
use async_trait::async_trait;
use hgpt_core::backend::{
    Availability, InferenceBackend, InferenceError, InferenceRequest, MediaStore,
};
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The Hugging Face router.
pub const DEFAULT_ROUTER_URL: &str = "https://router.huggingface.co";

/// Which providers to use, in which order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ProviderOrder {
    /// Every provider hgpt can call, in the order of the Hub's mapping
    /// (which follows the user's preferences on the Hub).
    #[default]
    Auto,
    /// Only these, in this order.
    Only(Vec<String>),
}

/// Settings of [`RouterBackend`] beyond the HTTP ones in [`HfConfig`].
#[derive(Clone, PartialEq)]
pub struct RouterConfig {
    /// The router (`https://router.huggingface.co`).
    pub router_url: String,
    /// The Hub whose API publishes provider mappings (`HF_ENDPOINT`).
    pub hub_endpoint: String,
    /// Which providers, in which order.
    pub providers: ProviderOrder,
    /// A provider's own key: calls to that provider go to its own API with
    /// it instead of through the router.
    pub provider_keys: BTreeMap<String, String>,
    /// A provider's own API base URL, replacing the built-in one (a proxy,
    /// or a fake in tests).
    pub provider_urls: BTreeMap<String, String>,
    /// How long a provider mapping is trusted.
    pub mapping_ttl: Duration,
    /// Where mappings are cached across processes (`None`: memory only).
    pub mapping_cache_dir: Option<PathBuf>,
    /// Between two polls of a queued job.
    pub poll_interval: Duration,
    /// How long a queued job may take in all.
    pub job_timeout: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            router_url: DEFAULT_ROUTER_URL.to_string(),
            hub_endpoint: crate::hub::DEFAULT_HUB_ENDPOINT.to_string(),
            providers: ProviderOrder::Auto,
            provider_keys: BTreeMap::new(),
            provider_urls: BTreeMap::new(),
            mapping_ttl: Duration::from_secs(6 * 3600),
            mapping_cache_dir: None,
            poll_interval: Duration::from_millis(500),
            job_timeout: Duration::from_secs(600),
        }
    }
}

impl std::fmt::Debug for RouterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterConfig")
            .field("router_url", &self.router_url)
            .field("hub_endpoint", &self.hub_endpoint)
            .field("providers", &self.providers)
            .field(
                "provider_keys",
                &self.provider_keys.keys().collect::<Vec<_>>(),
            )
            .field("provider_urls", &self.provider_urls)
            .field("mapping_ttl", &self.mapping_ttl)
            .field("mapping_cache_dir", &self.mapping_cache_dir)
            .field("poll_interval", &self.poll_interval)
            .field("job_timeout", &self.job_timeout)
            .finish()
    }
}

/// An [`InferenceBackend`] over the Hugging Face router and its providers.
/// Models with their own endpoint (`HfConfig::model_endpoints`) are served
/// there, as by [`HfBackend`].
pub struct RouterBackend {
    http: HfBackend,
    router: RouterConfig,
    directory: Arc<ProviderDirectory>,
    media: Arc<dyn MediaStore>,
}

impl std::fmt::Debug for RouterBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterBackend")
            .field("http", &self.http)
            .field("router", &self.router)
            .finish_non_exhaustive()
    }
}

/// A provider chosen for one task of one model.
struct Route<'a> {
    provider: &'static dyn Provider,
    entry: &'a ProviderEntry,
}

impl RouterBackend {
    /// Build the backend. `media` downloads the result files providers name
    /// (with its address checks) and checks their content.
    pub fn new(
        http: HfConfig,
        router: RouterConfig,
        media: Arc<dyn MediaStore>,
    ) -> Result<Self, HfError> {
        let mut router = router;
        router.router_url = normalized_base(&router.router_url)?;
        router.hub_endpoint = normalized_base(&router.hub_endpoint)?;
        for url in router.provider_urls.values_mut() {
            *url = normalized_base(url)?;
        }
        let token = http.token.clone();
        let status_timeout = http.status_timeout;
        let http = HfBackend::new(http)?;
        let hub = HubApi::new(
            &router.hub_endpoint,
            token,
            http.client().clone(),
            status_timeout,
        );
        let directory = Arc::new(ProviderDirectory::new(
            hub,
            router.mapping_ttl,
            router.mapping_cache_dir.clone(),
        ));
        Ok(Self {
            http,
            router,
            directory,
            media,
        })
    }

    /// The provider mappings this backend reads (and caches).
    pub fn directory(&self) -> &Arc<ProviderDirectory> {
        &self.directory
    }

    fn self_hosted(&self, model: &str) -> bool {
        self.http.config().model_endpoints.contains_key(model)
    }

    fn enabled(&self, name: &str) -> bool {
        match &self.router.providers {
            ProviderOrder::Auto => true,
            ProviderOrder::Only(names) => names.iter().any(|n| n == name),
        }
    }

    fn has_credentials(&self, name: &str) -> bool {
        name == "hf-inference"
            || self.http.config().token.is_some()
            || self.router.provider_keys.contains_key(name)
    }

    /// The providers to try for `task`, in order, or why there are none.
    fn routes<'a>(
        &self,
        task: TaskKind,
        providers: &'a ModelProviders,
    ) -> Result<Vec<Route<'a>>, String> {
        let mut routes = Vec::new();
        let mut reasons = Vec::new();
        for entry in &providers.entries {
            let name = entry.provider.as_str();
            if !entry.serves(task) {
                reasons.push(format!("{name} serves it for {}", entry.task));
                continue;
            }
            let Some(provider) = provider(name).filter(|p| p.serves(task)) else {
                reasons.push(format!("{name} (hgpt cannot call it for {task})"));
                continue;
            };
            if !self.enabled(name) {
                reasons.push(format!("{name} (not in [huggingface] providers)"));
                continue;
            }
            if entry.status == MappingStatus::Error {
                reasons.push(format!("{name} (its latest health check failed)"));
                continue;
            }
            if !self.has_credentials(name) {
                reasons.push(format!("{name} (needs HF_TOKEN or its own key)"));
                continue;
            }
            if name == "hf-inference" && !hf_inference_serves(task, providers) {
                reasons.push(format!(
                    "hf-inference (it serves the model's pipeline_tag {})",
                    providers.pipeline_tag.as_deref().unwrap_or("none")
                ));
                continue;
            }
            routes.push(Route { provider, entry });
        }
        if let ProviderOrder::Only(order) = &self.router.providers {
            routes.sort_by_key(|route| {
                order
                    .iter()
                    .position(|n| n == route.provider.name())
                    .unwrap_or(usize::MAX)
            });
        }
        if routes.is_empty() {
            let detail = if reasons.is_empty() {
                "no provider serves it".to_string()
            } else {
                reasons.join("; ")
            };
            return Err(format!("no enabled provider serves {task}: {detail}"));
        }
        Ok(routes)
    }

    /// The model's providers from the directory, as an inference error when
    /// the Hub cannot say.
    async fn providers(&self, model: &str) -> Result<ModelProviders, InferenceError> {
        match self.directory.lookup(model).await.result {
            Ok(Some(providers)) => Ok(providers),
            Ok(None) => Err(InferenceError::Unsupported(format!(
                "the Hub does not know {model}"
            ))),
            Err(err) => Err(InferenceError::Transport {
                model: model.to_string(),
                message: format!("cannot tell which provider serves it: {err}"),
            }),
        }
    }

    fn call<'a>(
        &'a self,
        request: &'a InferenceRequest,
        route: &Route<'a>,
        deadline: Instant,
    ) -> Call<'a> {
        let name = route.provider.name();
        let (base, via_router, authorization) = match self.router.provider_keys.get(name) {
            Some(key) => (
                self.router
                    .provider_urls
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| route.provider.direct_base(request.task).to_string()),
                false,
                Some(route.provider.direct_authorization(key)),
            ),
            None => (
                format!("{}/{name}", self.router.router_url),
                true,
                self.http
                    .config()
                    .token
                    .as_ref()
                    .map(|t| format!("Bearer {t}")),
            ),
        };
        Call {
            request,
            entry: route.entry,
            base,
            via_router,
            hub_endpoint: &self.router.hub_endpoint,
            authorization,
            http: &self.http,
            media: self.media.as_ref(),
            poll_interval: self.router.poll_interval,
            deadline,
            accepted: AtomicBool::new(false),
            job_timeout: self.router.job_timeout,
        }
    }
}

/// Whether hf-inference serves `task` for a model of this `pipeline_tag`
/// (as the Python client checks: embeddings and similarity are
/// interchangeable, chat runs on text-generation models).
fn hf_inference_serves(task: TaskKind, providers: &ModelProviders) -> bool {
    let Some(tag) = providers.pipeline_tag.as_deref() else {
        return true;
    };
    let task = task.as_str();
    match tag {
        "text-generation" => matches!(task, "text-generation" | "conversational"),
        "text2text-generation" => matches!(task, "text-generation" | "text2text-generation"),
        "image-text-to-text" => task == "conversational",
        "feature-extraction" | "sentence-similarity" => {
            matches!(task, "feature-extraction" | "sentence-similarity")
        }
        tag => tag == task,
    }
}

#[async_trait]
impl InferenceBackend for RouterBackend {
    /// `huggingface`, followed by the enabled providers hgpt can call for
    /// the model and whether hf-inference has it warm, once its mapping is
    /// known (selection checks availability first, so the LLM sees them).
    fn endpoint(&self, model: &str) -> String {
        if self.self_hosted(model) {
            return self.http.endpoint(model);
        }
        let label = self.http.config().endpoint_label.clone();
        let Some(providers) = self.directory.cached(model) else {
            return label;
        };
        let mut names: Vec<&str> = Vec::new();
        for entry in &providers.entries {
            let name = entry.provider.as_str();
            let usable = provider(name).is_some()
                && self.enabled(name)
                && entry.status != MappingStatus::Error;
            if usable && !names.contains(&name) {
                names.push(name);
            }
        }
        if names.is_empty() {
            return label;
        }
        let warm =
            providers.inference.as_deref() == Some("warm") && names.contains(&"hf-inference");
        format!(
            "{label} ({}{})",
            names.join(", "),
            if warm { "; warm on hf-inference" } else { "" }
        )
    }

    fn runs_task(&self, task: TaskKind) -> bool {
        !is_local_only(task)
    }

    async fn availability(&self, task: TaskKind, model: &str) -> Availability {
        if self.self_hosted(model) {
            return self.http.availability(task, model).await;
        }
        if is_local_only(task) {
            return Availability::Unavailable(format!("{task} runs on local models only"));
        }
        if !valid_hub_id(model) {
            return Availability::Unavailable(format!("invalid model id {model:?}"));
        }
        match self.directory.lookup(model).await.result {
            Ok(Some(providers)) => match self.routes(task, &providers) {
                Ok(_) => Availability::Available,
                Err(reason) => Availability::Unavailable(reason),
            },
            Ok(None) => Availability::Unavailable(format!("the Hub does not know {model}")),
            Err(err) => {
                tracing::warn!(model, %err, "cannot read the provider mapping");
                Availability::Unknown
            }
        }
    }

    async fn infer(&self, request: &InferenceRequest) -> Result<InferenceOutput, InferenceError> {
        let model = request.model.as_str();
        if self.self_hosted(model) {
            return self.http.infer(request).await;
        }
        if is_local_only(request.task) {
            return Err(InferenceError::Unsupported(format!(
                "{} runs on local models only",
                request.task
            )));
        }
        if !valid_hub_id(model) {
            return Err(InferenceError::BadInput {
                task: request.task,
                message: format!("invalid model id {model:?}"),
            });
        }
        let providers = self.providers(model).await?;
        let routes = self
            .routes(request.task, &providers)
            .map_err(InferenceError::Unsupported)?;
        let mut failures = Vec::new();
        // One time limit for the task, whichever providers it takes.
        let deadline = Instant::now() + self.router.job_timeout;
        for route in &routes {
            let name = route.provider.name();
            tracing::debug!(model, provider = name, task = %request.task, "hosted inference");
            let call = self.call(request, route, deadline);
            match route.provider.run(&call).await {
                Ok(output) => return Ok(output),
                // Bad input fails on every provider alike; a timeout has
                // used the task's time; a job the provider accepted may
                // still run (and be billed): another provider would pay
                // for the task twice.
                Err(err @ (InferenceError::BadInput { .. } | InferenceError::Timeout { .. })) => {
                    return Err(err);
                }
                Err(err) if call.accepted.load(Ordering::Relaxed) => return Err(err),
                Err(err) => {
                    tracing::debug!(model, provider = name, %err, "provider failed");
                    failures.push(err);
                }
            }
        }
        match failures.len() {
            1 => Err(failures.remove(0)),
            _ => Err(InferenceError::Server {
                model: model.to_string(),
                status: 502,
                message: failures
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; then "),
            }),
        }
    }
}
