//! The model catalog: which Hugging Face models can do which task, ranked the
//! way selection ranks them.
//!
//! The format is the reference's JSONL (one model per line: `id`, `task` or
//! `pipeline_tag`, `downloads`, `likes`, `meta.tags`, `description`, ...). A
//! curated default is built into the binary; files given by the user replace it.

use crate::task::TaskName;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// The built-in catalog (JSONL), curated for hgpt.
pub const BUILTIN_CATALOG: &str = include_str!("../assets/catalog.jsonl");

/// One model of the catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Hub id, `org/name`.
    pub id: String,
    /// The task it serves.
    pub task: String,
    /// Download count, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downloads: Option<u64>,
    /// Like count, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub likes: Option<u64>,
    /// Tags from the model card metadata.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// A short description.
    #[serde(default)]
    pub description: String,
}

impl CatalogEntry {
    /// The task type this entry serves.
    pub fn task_name(&self) -> TaskName {
        TaskName::parse(&self.task)
    }

    /// The description cut to `max_chars` characters (with an ellipsis when cut).
    pub fn short_description(&self, max_chars: usize) -> String {
        let text = self
            .description
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if text.chars().count() <= max_chars {
            return text;
        }
        let mut cut: String = text.chars().take(max_chars).collect();
        cut.push('…');
        cut
    }
}

/// Why a catalog could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// A file could not be read.
    #[error("cannot read catalog {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
    /// A line is not a valid catalog entry.
    #[error("{source_name}:{line}: {message}")]
    Line {
        /// File name or `built-in`.
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// A ranked collection of models.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    entries: Vec<CatalogEntry>,
}

impl Catalog {
    /// The built-in catalog.
    pub fn builtin() -> Result<Self, CatalogError> {
        Self::from_jsonl(BUILTIN_CATALOG, "built-in catalog")
    }

    /// Read JSONL text; blank lines and `#` comments are skipped.
    pub fn from_jsonl(text: &str, source_name: &str) -> Result<Self, CatalogError> {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let error = |message: String| CatalogError::Line {
                source_name: source_name.to_string(),
                line: index + 1,
                message,
            };
            let value: Value =
                serde_json::from_str(line).map_err(|e| error(format!("invalid JSON: {e}")))?;
            entries.push(entry_from_json(&value).map_err(error)?);
        }
        Ok(Self { entries })
    }

    /// Read and concatenate several JSONL files, in order.
    pub fn from_files<P: AsRef<Path>>(paths: &[P]) -> Result<Self, CatalogError> {
        let mut entries = Vec::new();
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path).map_err(|e| CatalogError::Read {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            entries.extend(Self::from_jsonl(&text, &path.display().to_string())?.entries);
        }
        Ok(Self { entries })
    }

    /// Every entry, in file order.
    pub fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    /// Entries for a task, best first: by downloads (highest first); entries
    /// with unknown downloads follow, in catalog order.
    pub fn ranked(&self, task: &TaskName) -> Vec<&CatalogEntry> {
        let mut matching: Vec<&CatalogEntry> = self
            .entries
            .iter()
            .filter(|e| e.task_name() == *task)
            .collect();
        matching.sort_by_key(|e| std::cmp::Reverse(e.downloads.map(|d| d.saturating_add(1))));
        matching
    }

    /// Every entry ranked, grouped by task in catalog order of first appearance.
    pub fn ranked_all(&self) -> Vec<&CatalogEntry> {
        let mut tasks: Vec<TaskName> = Vec::new();
        for entry in &self.entries {
            let name = entry.task_name();
            if !tasks.contains(&name) {
                tasks.push(name);
            }
        }
        tasks.iter().flat_map(|t| self.ranked(t)).collect()
    }
}

fn entry_from_json(value: &Value) -> Result<CatalogEntry, String> {
    let object = value
        .as_object()
        .ok_or("a catalog line must be a JSON object")?;
    let text = |key: &str| object.get(key).and_then(Value::as_str).map(str::trim);
    let id = text("id")
        .filter(|s| !s.is_empty())
        .ok_or("missing \"id\"")?;
    let task = text("task")
        .or_else(|| text("pipeline_tag"))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("{id}: missing \"task\" (or \"pipeline_tag\")"))?;
    let count = |key: &str| object.get(key).and_then(Value::as_u64);
    let tags = object
        .get("meta")
        .and_then(|m| m.get("tags"))
        .or_else(|| object.get("tags"))
        .and_then(Value::as_array)
        .map(|tags| {
            tags.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Ok(CatalogEntry {
        id: id.to_string(),
        task: TaskName::parse(task).as_str().to_string(),
        downloads: count("downloads"),
        likes: count("likes"),
        tags,
        description: text("description").unwrap_or_default().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::TaskKind;

    const SAMPLE: &str = r#"
{"id": "a/low", "task": "object-detection", "downloads": 10, "likes": 1, "meta": {"tags": ["detr"]}, "description": "Low."}
# a comment
{"id": "a/none1", "pipeline_tag": "object-detection", "description": "No count."}
{"id": "a/high", "task": "object-detection", "downloads": 1000, "description": "High."}
{"id": "a/none2", "task": "Object Detection"}
{"id": "b/cap", "task": "image-to-text", "downloads": 5}
"#;

    #[test]
    fn ranks_by_downloads_then_catalog_order() {
        let catalog = Catalog::from_jsonl(SAMPLE, "sample").unwrap();
        let ids: Vec<_> = catalog
            .ranked(&TaskName::Known(TaskKind::ObjectDetection))
            .iter()
            .map(|e| e.id.as_str())
            .collect();
        assert_eq!(ids, ["a/high", "a/low", "a/none1", "a/none2"]);
        assert_eq!(catalog.ranked_all().len(), 5);
        assert_eq!(catalog.entries()[0].tags, ["detr"]);
    }

    #[test]
    fn bad_lines_name_the_line() {
        let err = Catalog::from_jsonl("{\"id\": \"x/y\", \"task\": \"t\"}\n{not json", "f.jsonl")
            .unwrap_err();
        assert!(
            err.to_string().starts_with("f.jsonl:2: invalid JSON"),
            "{err}"
        );
        let err = Catalog::from_jsonl("{\"task\": \"t\"}", "f.jsonl").unwrap_err();
        assert!(err.to_string().contains("missing \"id\""), "{err}");
    }

    #[test]
    fn descriptions_are_cut() {
        let entry = CatalogEntry {
            id: "a/b".into(),
            task: "x".into(),
            downloads: None,
            likes: None,
            tags: vec![],
            description: "one  two\nthree four".into(),
        };
        assert_eq!(entry.short_description(100), "one two three four");
        assert_eq!(entry.short_description(7), "one two…");
    }

    #[test]
    fn builtin_catalog_loads() {
        let catalog = Catalog::builtin().unwrap();
        assert!(
            !catalog
                .ranked(&TaskName::Known(TaskKind::ObjectDetection))
                .is_empty()
        );
    }
}
