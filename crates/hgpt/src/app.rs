//! Assembling the pipeline from settings: the controller LLM, the inference
//! backend, the media store, the catalog and the prompts.

use crate::settings::{PromptsSection, Settings};
use anyhow::{Context, Result, bail};
use hgpt_core::backend::InferenceBackend;
use hgpt_core::catalog::Catalog;
use hgpt_core::pipeline::{Pipeline, PipelineConfig};
use hgpt_core::prompt::{Prompts, parse_demos};
use hgpt_core::routing::RoutedBackend;
use hgpt_core::selection::SelectionConfig;
use hgpt_hf::{HfBackend, HfConfig};
use hgpt_llm::{OpenAiClient, OpenAiConfig};
use hgpt_local::{LocalBackend, LocalConfig, ModelCache};
use hgpt_media::{LocalMedia, MediaConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Shown when no controller LLM is configured.
pub const NO_LLM: &str = "hgpt needs an LLM as its controller, and none is configured. \
Point it at any OpenAI-compatible server by setting HGPT_LLM_BASE_URL (for example \
http://127.0.0.1:8000/v1 for a local vLLM, llama.cpp or Ollama server, or https://api.openai.com/v1) \
and HGPT_LLM_MODEL (for example gpt-4o-mini), plus HGPT_LLM_API_KEY (or OPENAI_API_KEY) if the \
server needs a key; the same settings can go in hgpt.toml under [llm] (base_url, model, api_key) \
or be passed as --llm-base-url, --llm-model and --llm-api-key. Setting only OPENAI_API_KEY uses \
OpenAI with gpt-4o-mini.";

/// The catalog the settings name: the given files, or the built-in one.
pub fn catalog(settings: &Settings) -> Result<Catalog> {
    if settings.catalog_files.is_empty() {
        Catalog::builtin().context("the built-in catalog is invalid")
    } else {
        Catalog::from_files(&settings.catalog_files).context("cannot load the model catalog")
    }
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
/// `HF_HOME`).
pub fn local_backend(settings: &Settings) -> LocalBackend {
    LocalBackend::new(LocalConfig {
        cache: ModelCache::from_env(),
        memory_budget_bytes: settings.local_memory_bytes,
        device: hgpt_local::device::best_device(),
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

/// The whole pipeline, or [`NO_LLM`] when no controller is configured.
pub fn pipeline(settings: &Settings) -> Result<Pipeline> {
    let (Some(base_url), Some(model)) = (&settings.llm_base_url, &settings.llm_model) else {
        bail!(NO_LLM);
    };
    let llm = OpenAiClient::new(OpenAiConfig {
        base_url: base_url.clone(),
        api_key: settings.llm_api_key.clone(),
        model: model.clone(),
        request_timeout: settings.llm_timeout,
        max_retries: settings.llm_max_retries,
        ..OpenAiConfig::default()
    })
    .context("cannot set up the LLM client")?;
    let remote = HfBackend::new(HfConfig {
        base_url: settings.hf_base_url.clone(),
        token: settings.hf_token.clone(),
        request_timeout: settings.hf_timeout,
        max_retries: settings.hf_max_retries,
        max_loading_wait: settings.hf_max_loading_wait,
        model_endpoints: settings.hf_endpoints.clone(),
        ..HfConfig::default()
    })
    .context("cannot set up the inference backend")?;
    let mut local: Vec<Arc<dyn InferenceBackend>> = vec![Arc::new(local_backend(settings))];
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
    let backend = RoutedBackend::new(settings.inference_mode, local, Arc::new(remote));
    let media =
        LocalMedia::new(media_config(settings)).context("cannot set up the media folders")?;
    let context_window = settings
        .llm_context
        .or_else(|| hgpt_llm::context_window(model))
        .unwrap_or(8192);
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
        ..PipelineConfig::default()
    };
    Ok(Pipeline::new(
        Arc::new(llm),
        Arc::new(backend),
        Arc::new(media),
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
