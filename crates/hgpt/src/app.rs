//! Assembling the pipeline from settings: the controller LLM, the inference
//! backend, the media store, the catalog and the prompts.

use crate::settings::{PromptsSection, Settings};
use anyhow::{Context, Result};
use hgpt_controller::{
    ControllerSettings, EmbeddedController, Engine, EngineOptions, HubAccess, ModelSpec, Sampling,
};
use hgpt_core::backend::ChatModel;
use hgpt_core::backend::{InferenceBackend, MediaStore};
use hgpt_core::catalog::{BadLines, Catalog};
use hgpt_core::pipeline::{Pipeline, PipelineConfig};
use hgpt_core::prompt::{Prompts, parse_demos};
use hgpt_core::routing::RoutedBackend;
use hgpt_core::selection::SelectionConfig;
use hgpt_hf::{HfBackend, HfConfig, RouterBackend, RouterConfig};
use hgpt_llm::{OpenAiClient, OpenAiConfig};
use hgpt_local::{AutoPull, LocalBackend, LocalConfig, ModelCache};
use hgpt_media::{LocalMedia, MediaConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The catalog the settings name: the given files, else the one `hgpt
/// models sync` wrote into the data directory, else the built-in one. A line
/// of a file that is not an entry is skipped with a warning naming the file
/// and line, unless `[catalog] strict` refuses the catalog instead.
pub fn catalog(settings: &Settings) -> Result<Catalog> {
    let synced = crate::sync::synced_catalog_path(settings);
    let files = if !settings.catalog_files.is_empty() {
        settings.catalog_files.clone()
    } else if synced.is_file() {
        vec![synced]
    } else {
        return Catalog::builtin().context("the built-in catalog is invalid");
    };
    let bad_lines = if settings.catalog_strict {
        BadLines::Refuse
    } else {
        BadLines::Skip
    };
    let (catalog, skipped) =
        Catalog::read_files(&files, bad_lines).context("cannot load the model catalog")?;
    for line in &skipped {
        eprintln!("warning: catalog line skipped: {line}");
    }
    Ok(catalog)
}

/// The default prompts with the config file's replacements applied.
pub fn prompts(section: &PromptsSection) -> Result<Prompts> {
    let mut prompts = Prompts::default();
    let replace = |target: &mut String, value: &Option<String>| {
        if let Some(value) = value {
            *target = value.clone();
        }
    };
    replace(&mut prompts.plan.system, &section.plan_system);
    replace(&mut prompts.plan.user, &section.plan_user);
    replace(&mut prompts.select.system, &section.select_system);
    replace(&mut prompts.select.user, &section.select_user);
    replace(&mut prompts.answer.system, &section.answer_system);
    replace(&mut prompts.answer.user, &section.answer_user);
    replace(&mut prompts.chat_system, &section.chat_system);
    replace(&mut prompts.text_task, &section.text_task);
    let demos = |path: &Path| -> Result<_> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read demonstrations {}", path.display()))?;
        Ok(parse_demos(&text, &path.display().to_string())?)
    };
    if let Some(path) = &section.plan_demos {
        prompts.plan.demos = demos(path)?;
    }
    if let Some(path) = &section.select_demos {
        prompts.select.demos = demos(path)?;
    }
    if let Some(path) = &section.answer_demos {
        prompts.answer.demos = demos(path)?;
    }
    Ok(prompts)
}

/// The in-process runtime over the Hugging Face cache (`HF_HUB_CACHE`,
/// `HF_HOME`); with `pull_missing`, models not cached are downloaded on first
/// use within the download limit (never offline).
pub fn local_backend(settings: &Settings, pull_missing: bool) -> LocalBackend {
    let allowed = pull_missing && !settings.offline && settings.model_download_limit_bytes > 0;
    let pull = allowed.then(|| AutoPull {
        max_bytes: settings.model_download_limit_bytes,
        endpoint: std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()),
        token: settings.hf_token.clone(),
    });
    LocalBackend::new(LocalConfig {
        cache: ModelCache::from_env(),
        memory_budget_bytes: settings.local_memory_bytes,
        device: hgpt_local::device::best_device(),
        pull,
    })
}

/// Where inputs are read from and outputs written.
pub fn media_config(settings: &Settings) -> MediaConfig {
    MediaConfig {
        media_root: settings.media_root.clone(),
        out_dir: settings.out_dir.clone(),
        allow_private_urls: settings.allow_private_urls,
        max_download_bytes: settings.max_download_bytes,
        download_timeout: Duration::from_secs(30),
        ..MediaConfig::default()
    }
}

/// A progress bar per downloaded file, drawn on stderr.
pub struct FileProgress(indicatif::ProgressBar);

impl FileProgress {
    /// A bar under `multi`.
    pub fn new(multi: &indicatif::MultiProgress) -> Self {
        let style = indicatif::ProgressStyle::with_template(
            "{msg:32!} {bar:30.cyan/blue} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        Self(multi.add(indicatif::ProgressBar::new(0).with_style(style)))
    }
}

impl hf_hub::api::Progress for FileProgress {
    fn init(&mut self, size: usize, filename: &str) {
        self.0.set_length(size as u64);
        self.0.set_message(filename.to_string());
    }
    fn update(&mut self, size: usize) {
        self.0.inc(size as u64);
    }
    fn finish(&mut self) {
        self.0.finish();
    }
}

/// Where the Hub is and how to reach it, from the settings and environment.
pub fn hub_access(settings: &Settings) -> HubAccess {
    HubAccess {
        cache_dir: ModelCache::from_env().path().to_path_buf(),
        endpoint: std::env::var("HF_ENDPOINT").ok().filter(|e| !e.is_empty()),
        token: settings.hf_token.clone(),
        offline: settings.offline,
    }
}

/// The controller: the configured OpenAI-compatible server, or else the
/// embedded model (downloaded on first use unless offline). Returns it with
/// its context window.
pub async fn controller(settings: &Settings) -> Result<(Arc<dyn ChatModel>, usize)> {
    if let (Some(base_url), Some(model)) = (&settings.llm_base_url, &settings.llm_model) {
        let llm = OpenAiClient::new(OpenAiConfig {
            base_url: base_url.clone(),
            api_key: settings.llm_api_key.clone(),
            model: model.clone(),
            request_timeout: settings.llm_timeout,
            max_retries: settings.llm_max_retries,
            ..OpenAiConfig::default()
        })
        .context("cannot set up the LLM client")?;
        let context = settings
            .llm_context
            .or_else(|| hgpt_llm::context_window(model))
            .unwrap_or(8192);
        return Ok((Arc::new(llm), context));
    }
    let name = settings
        .llm_local
        .clone()
        .unwrap_or_else(|| hgpt_controller::DEFAULT_MODEL.to_string());
    let spec = ModelSpec::parse(&name).map_err(anyhow::Error::msg)?;
    let access = hub_access(settings);
    let options = EngineOptions {
        context: settings.llm_context.unwrap_or(4096),
        cache_dir: settings.llm_prompt_cache_dir.clone(),
        tokenizer: settings.llm_tokenizer.clone(),
    };
    let device = hgpt_local::device::best_device();
    let engine = tokio::task::spawn_blocking(move || -> Result<Engine> {
        let multi = indicatif::MultiProgress::new();
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            multi.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let path = hgpt_controller::source::resolve(&spec, &access, FileProgress::new(&multi))
            .map_err(|e| {
                anyhow::anyhow!(
                    "{e}; or use an OpenAI-compatible server instead with \
                     --llm-base-url/HGPT_LLM_BASE_URL and --llm-model/HGPT_LLM_MODEL"
                )
            })?;
        let started = std::time::Instant::now();
        let engine = Engine::load(&path, &device, &options)
            .with_context(|| format!("cannot load the controller model {}", path.display()))?;
        tracing::info!(
            model = %path.display(),
            weights_mib = engine.model().weight_bytes() >> 20,
            ms = started.elapsed().as_millis() as u64,
            "loaded the embedded controller"
        );
        Ok(engine)
    })
    .await
    .context("loading the controller model crashed")??;
    let controller = EmbeddedController::new(
        engine,
        ControllerSettings {
            sampling: Sampling {
                temperature: settings.llm_temperature.unwrap_or(0.0),
                top_p: settings.llm_top_p,
                seed: settings.llm_seed,
                repeat_penalty: settings.llm_repeat_penalty,
            },
            max_tokens: settings.llm_max_tokens,
        },
    );
    let context = controller.context_window();
    Ok((Arc::new(controller), context))
}

/// Remote inference: a self-hosted server of the wire protocol for every
/// model when `[huggingface] base_url` is set, else the Hugging Face router
/// and its providers (result files downloaded through `media`).
pub fn remote_backend(
    settings: &Settings,
    media: Arc<dyn MediaStore>,
) -> Result<Arc<dyn InferenceBackend>> {
    let http = HfConfig {
        token: settings.hf_token.clone(),
        request_timeout: settings.hf_timeout,
        max_retries: settings.hf_max_retries,
        max_loading_wait: settings.hf_max_loading_wait,
        model_endpoints: settings.hf_endpoints.clone(),
        ..HfConfig::default()
    };
    if let Some(base_url) = &settings.hf_base_url {
        let backend = HfBackend::new(HfConfig {
            base_url: base_url.clone(),
            ..http
        })
        .context("cannot set up the inference backend")?;
        return Ok(Arc::new(backend));
    }
    let router = RouterConfig {
        router_url: settings.hf_router_url.clone(),
        hub_endpoint: settings.hf_hub_endpoint.clone(),
        providers: settings.hf_providers.clone(),
        provider_keys: settings.hf_provider_keys.clone(),
        provider_urls: settings.hf_provider_urls.clone(),
        mapping_ttl: settings.hf_mapping_ttl,
        mapping_cache_dir: Some(settings.hf_mapping_cache_dir.clone()),
        job_timeout: settings.hf_job_timeout,
        ..RouterConfig::default()
    };
    let backend = RouterBackend::new(
        HfConfig {
            base_url: format!(
                "{}/hf-inference",
                settings.hf_router_url.trim_end_matches('/')
            ),
            ..http
        },
        router,
        media,
    )
    .context("cannot set up hosted inference")?;
    Ok(Arc::new(backend))
}

/// The whole pipeline.
pub async fn pipeline(settings: &Settings) -> Result<Pipeline> {
    let (llm, context_window) = controller(settings).await?;
    let media = Arc::new(
        LocalMedia::new(media_config(settings)).context("cannot set up the media folders")?,
    );
    let remote = remote_backend(settings, media.clone())?;
    let mut local: Vec<Arc<dyn InferenceBackend>> = vec![Arc::new(local_backend(settings, true))];
    if let Some(url) = &settings.local_endpoint {
        let server = HfBackend::new(HfConfig {
            base_url: url.clone(),
            endpoint_label: "local".to_string(),
            request_timeout: settings.hf_timeout,
            ..HfConfig::default()
        })
        .with_context(|| format!("cannot use the local model server at {url}"))?;
        local.push(Arc::new(server));
    }
    let backend = RoutedBackend::new(settings.inference_mode, local, remote);
    let config = PipelineConfig {
        selection: SelectionConfig {
            considered: settings.considered.max(settings.candidates),
            candidates: settings.candidates,
            max_description_len: settings.description_length,
        },
        max_concurrency: settings.concurrency,
        task_timeout: settings.task_timeout,
        run_timeout: settings.run_timeout,
        context_window,
        fallback_models: settings.fallback_models,
        temperature: settings.llm_temperature,
        stream_plan: settings.stream_plan,
        ..PipelineConfig::default()
    };
    Ok(Pipeline::new(
        llm,
        Arc::new(backend),
        media,
        Arc::new(catalog(settings)?),
        Arc::new(prompts(&settings.prompts)?),
        config,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_replaces_templates_and_demonstrations() {
        let dir = tempfile::tempdir().unwrap();
        let demos = dir.path().join("demo_parse_task.json");
        std::fs::write(
            &demos,
            r#"[{"role": "user", "content": "show me a cat"}, {"role": "assistant", "content": "[{\"task\": \"text-to-image\", \"id\": 0, \"dep\": [-1], \"args\": {\"text\": \"a cat\"}}]"}]"#,
        )
        .unwrap();
        let section = PromptsSection {
            plan_system: Some("custom planner {{task_types}}".into()),
            plan_demos: Some(demos),
            ..PromptsSection::default()
        };
        let prompts = prompts(&section).unwrap();
        assert_eq!(prompts.plan.system, "custom planner {{task_types}}");
        assert_eq!(prompts.plan.demos.len(), 2);
        assert_eq!(prompts.plan.demos[0].content, "show me a cat");
        assert_eq!(
            prompts.select,
            Prompts::default().select,
            "other stages keep their defaults"
        );
    }

    #[test]
    fn bad_demonstration_files_are_named() {
        let section = PromptsSection {
            answer_demos: Some("/nonexistent/demo.json".into()),
            ..PromptsSection::default()
        };
        let error = format!("{:#}", prompts(&section).unwrap_err());
        assert!(error.contains("/nonexistent/demo.json"), "{error}");
    }
}
