//! `hgpt models sync`: the catalog from the Hub API. Per task type, the most
//! downloaded models with their downloads, likes, tags, config
//! architectures, the providers serving them and a description from the
//! model card, written as JSONL into the data directory, which selection
//! reads from then on.

use crate::settings::Settings;
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use hgpt_core::task::TaskKind;
use hgpt_hf::{HubApi, ListedModel, card_summary};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How many model cards are fetched at once.
const CARD_CONCURRENCY: usize = 8;
/// Description length kept from a model card.
const DESCRIPTION_CHARS: usize = 300;

/// Where the synced catalog lives.
pub fn synced_catalog_path(settings: &Settings) -> PathBuf {
    settings.data_dir.join("catalog.jsonl")
}

/// The task types a sync covers by default: every type with a Hub pipeline
/// tag (the ControlNet conditions are not Hub tasks).
fn default_tasks() -> Vec<TaskKind> {
    TaskKind::ALL
        .iter()
        .copied()
        .filter(|t| t.controlnet_model().is_none())
        .collect()
}

/// One catalog line, in the reference's shape plus `providers` and `config`.
fn catalog_line(task: TaskKind, model: &ListedModel, description: Option<String>) -> Value {
    let providers: Vec<&str> = model
        .providers
        .entries
        .iter()
        .filter(|e| e.serves(task))
        .map(|e| e.provider.as_str())
        .collect();
    let mut line = json!({
        "id": model.id,
        "task": task.as_str(),
        "downloads": model.downloads,
        "likes": model.likes,
        "tags": model.tags,
        "description": description.unwrap_or_default(),
        "providers": providers,
    });
    if !model.architectures.is_empty() || model.model_type.is_some() {
        line["config"] = json!({
            "architectures": model.architectures,
            "model_type": model.model_type,
        });
    }
    line
}

/// Run the sync; prints a summary and returns the path written.
pub async fn sync(settings: &Settings, tasks: &[String], limit: usize) -> Result<PathBuf> {
    if settings.offline {
        bail!("models sync reads the Hub API; it cannot run offline");
    }
    if limit == 0 {
        bail!("--limit must be at least 1");
    }
    let tasks: Vec<TaskKind> = if tasks.is_empty() {
        default_tasks()
    } else {
        tasks
            .iter()
            .map(|name| {
                TaskKind::parse(name).ok_or_else(|| anyhow::anyhow!("unknown task type {name:?}"))
            })
            .collect::<Result<_>>()?
    };
    let hub = HubApi::connect(
        &settings.hf_hub_endpoint,
        settings.hf_token.clone(),
        Duration::from_secs(60),
    )
    .context("cannot set up the Hub API client")?;
    let bar = indicatif::ProgressBar::new(tasks.len() as u64);
    if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:40!} {bar:30.cyan/blue} {pos}/{len} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );

    let mut lines = Vec::new();
    let mut failed_tasks = Vec::new();
    let mut missing_cards = 0usize;
    for task in &tasks {
        bar.set_message(format!("listing {task}"));
        let models = match hub.list_models(task.as_str(), limit).await {
            Ok(models) => models,
            Err(err) => {
                bar.suspend(|| eprintln!("warning: {task}: {err}"));
                failed_tasks.push(task.as_str());
                bar.inc(1);
                continue;
            }
        };
        bar.inc_length(models.len() as u64);
        bar.set_message(format!("model cards of {task}"));
        let cards = futures::stream::iter(models.iter().map(|model| {
            let hub = &hub;
            async move { hub.model_card(&model.id).await }
        }))
        .buffered(CARD_CONCURRENCY)
        .inspect(|_| bar.inc(1))
        .collect::<Vec<_>>()
        .await;
        for (model, card) in models.iter().zip(cards) {
            let description = match card {
                Ok(Some(card)) => card_summary(&card, DESCRIPTION_CHARS),
                Ok(None) => None,
                Err(err) => {
                    tracing::debug!(model = %model.id, %err, "no model card");
                    None
                }
            };
            missing_cards += usize::from(description.is_none());
            lines.push(catalog_line(*task, model, description));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if lines.is_empty() {
        bail!(
            "the Hub API listed no models (failed: {}); the catalog is unchanged",
            if failed_tasks.is_empty() {
                "none".to_string()
            } else {
                failed_tasks.join(", ")
            }
        );
    }
    let path = synced_catalog_path(settings);
    write_atomically(&path, &lines).await?;
    eprintln!(
        "wrote {} models of {} task types to {}{}{}",
        lines.len(),
        tasks.len() - failed_tasks.len(),
        path.display(),
        if missing_cards > 0 {
            format!(" ({missing_cards} without a model card description)")
        } else {
            String::new()
        },
        if failed_tasks.is_empty() {
            String::new()
        } else {
            format!("; could not list {}", failed_tasks.join(", "))
        }
    );
    Ok(path)
}

async fn write_atomically(path: &Path, lines: &[Value]) -> Result<()> {
    let mut text = String::new();
    for line in lines {
        text.push_str(&line.to_string());
        text.push('\n');
    }
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let partial = path.with_extension("jsonl.partial");
    tokio::fs::write(&partial, text)
        .await
        .with_context(|| format!("cannot write {}", partial.display()))?;
    tokio::fs::rename(&partial, path)
        .await
        .with_context(|| format!("cannot replace {}", path.display()))?;
    Ok(())
}
