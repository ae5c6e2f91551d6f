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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Hosted inference providers serving it for its task, in the Hub's
    /// order (from `hgpt models sync`; empty when unknown).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
    /// `config.json`'s `architectures`, when the catalog has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    /// `config.json`'s `model_type`, when the catalog has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
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

    /// Read JSONL text; blank lines and `#` comments are skipped. Any line
    /// that is not a catalog entry refuses the whole text.
    pub fn from_jsonl(text: &str, source_name: &str) -> Result<Self, CatalogError> {
        Self::read_jsonl(text, source_name, BadLines::Refuse).map(|(catalog, _)| catalog)
    }

    /// Read JSONL text as Python's `json` writes it: `NaN`, `Infinity` and
    /// `-Infinity` are read (as unknown values: no count is infinite), and
    /// with [`BadLines::Skip`] a line that is not a catalog entry is left
    /// out and returned with the entries instead of refusing the rest.
    pub fn read_jsonl(
        text: &str,
        source_name: &str,
        bad_lines: BadLines,
    ) -> Result<(Self, Vec<CatalogError>), CatalogError> {
        let mut entries = Vec::new();
        let mut skipped = Vec::new();
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
            let entry = serde_json::from_str::<Value>(&python_non_finite_as_null(line))
                .map_err(|e| error(format!("invalid JSON: {e}")))
                .and_then(|value| entry_from_json(&value).map_err(error));
            match (entry, bad_lines) {
                (Ok(entry), _) => entries.push(entry),
                (Err(e), BadLines::Skip) => skipped.push(e),
                (Err(e), BadLines::Refuse) => return Err(e),
            }
        }
        Ok((Self { entries }, skipped))
    }

    /// Read and concatenate several JSONL files, in order, refusing any bad
    /// line.
    pub fn from_files<P: AsRef<Path>>(paths: &[P]) -> Result<Self, CatalogError> {
        Self::read_files(paths, BadLines::Refuse).map(|(catalog, _)| catalog)
    }

    /// [`Catalog::read_jsonl`] over several files, in order; the skipped
    /// lines of all of them come back with the catalog.
    pub fn read_files<P: AsRef<Path>>(
        paths: &[P],
        bad_lines: BadLines,
    ) -> Result<(Self, Vec<CatalogError>), CatalogError> {
        let mut entries = Vec::new();
        let mut skipped = Vec::new();
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path).map_err(|e| CatalogError::Read {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
            let (catalog, bad) = Self::read_jsonl(&text, &path.display().to_string(), bad_lines)?;
            entries.extend(catalog.entries);
            skipped.extend(bad);
        }
        Ok((Self { entries }, skipped))
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

/// What reading a catalog does with a line that is not an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadLines {
    /// Leave it out and report it (the default: one broken line does not
    /// cost the whole catalog).
    #[default]
    Skip,
    /// Refuse the whole catalog.
    Refuse,
}

/// `line` with the bare `NaN`, `Infinity` and `-Infinity` tokens Python's
/// `json` writes (outside strings) turned into `null`.
fn python_non_finite_as_null(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.contains("NaN") && !line.contains("Infinity") {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    let mut in_string = false;
    while let Some(c) = rest.chars().next() {
        if in_string {
            let len = match c {
                '\\' => rest.chars().take(2).map(char::len_utf8).sum(),
                _ => c.len_utf8(),
            };
            in_string = c != '"';
            out.push_str(&rest[..len]);
            rest = &rest[len..];
            continue;
        }
        let token = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t));
        match token {
            Some(token) => {
                out.push_str("null");
                rest = &rest[token.len()..];
            }
            None => {
                in_string = c == '"';
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
    }
    std::borrow::Cow::Owned(out)
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
    let strings = |value: Option<&Value>| -> Vec<String> {
        value
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| {
                        // `["fal-ai", ...]`, or the Hub's list form of a
                        // provider mapping.
                        item.as_str()
                            .or_else(|| item.get("provider").and_then(Value::as_str))
                    })
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let config = object.get("config");
    Ok(CatalogEntry {
        id: id.to_string(),
        task: TaskName::parse(task).as_str().to_string(),
        downloads: count("downloads"),
        likes: count("likes"),
        tags,
        description: text("description").unwrap_or_default().to_string(),
        providers: strings(object.get("providers")),
        architectures: strings(config.and_then(|c| c.get("architectures"))),
        model_type: config
            .and_then(|c| c.get("model_type"))
            .and_then(Value::as_str)
            .map(str::to_string),
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
    fn synced_lines_keep_providers_and_config() {
        let catalog = Catalog::from_jsonl(
            concat!(
                r#"{"id": "a/b", "task": "text-to-image", "providers": ["fal-ai", "together"], "#,
                r#""config": {"architectures": ["X"], "model_type": "x"}}"#,
                "\n",
                r#"{"id": "c/d", "task": "text-to-image", "providers": [{"provider": "replicate"}, 3]}"#,
            ),
            "synced.jsonl",
        )
        .unwrap();
        let entries = catalog.entries();
        assert_eq!(entries[0].providers, ["fal-ai", "together"]);
        assert_eq!(entries[0].architectures, ["X"]);
        assert_eq!(entries[0].model_type.as_deref(), Some("x"));
        assert_eq!(entries[1].providers, ["replicate"]);
        assert!(entries[1].architectures.is_empty());
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
            ..CatalogEntry::default()
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

    #[test]
    fn python_non_finite_numbers_read_as_unknown() {
        let text = concat!(
            r#"{"id": "a/b", "task": "image-to-text", "downloads": NaN, "likes": Infinity, "#,
            r#""meta": {"score": -Infinity}, "description": "says \"NaN\" and Infinity"}"#,
        );
        let catalog = Catalog::from_jsonl(text, "p0_models.jsonl").unwrap();
        let entry = &catalog.entries()[0];
        assert_eq!((entry.downloads, entry.likes), (None, None));
        assert_eq!(entry.description, r#"says "NaN" and Infinity"#);
        assert_eq!(
            python_non_finite_as_null(r#"{"a": [NaN, -Infinity], "b": "\\", "c": NaN}"#),
            r#"{"a": [null, null], "b": "\\", "c": null}"#
        );
    }

    #[test]
    fn a_broken_line_is_skipped_and_named_unless_strict() {
        let text = "{\"id\": \"a/b\", \"task\": \"t\"}\n{not json\n{\"task\": \"t\"}\n{\"id\": \"c/d\", \"task\": \"t\"}";
        let (catalog, skipped) = Catalog::read_jsonl(text, "f.jsonl", BadLines::Skip).unwrap();
        let ids: Vec<&str> = catalog.entries().iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a/b", "c/d"]);
        let lines: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("f.jsonl:2: invalid JSON"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("f.jsonl:3: missing \"id\""),
            "{}",
            lines[1]
        );
        let err = Catalog::read_jsonl(text, "f.jsonl", BadLines::Refuse).unwrap_err();
        assert!(err.to_string().starts_with("f.jsonl:2:"), "{err}");
    }
}
