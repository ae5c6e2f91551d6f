//! Plans: reading the planner LLM's output and post-processing it into a
//! validated task graph.
//!
//! Reading accepts every kind of malformed output the reference documents
//! (see [`parse_plan`]); post-processing unfolds multi-reference arguments,
//! rebuilds dependencies from `<GENERATED>-k` references and rejects graphs
//! that cannot run (unknown references, cycles) with a message naming them.

use crate::lenient_json;
use crate::task::{ResourceKind, TaskKind, TaskName};
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

/// Canonical spelling of a reference to task `k`'s output.
pub fn reference(id: usize) -> String {
    format!("<GENERATED>-{id}")
}

/// Matches every spelling of a reference LLMs write: `<GENERATED>-0`,
/// `<GENERATED-0>`, `<generated>-0`, `<node-0>`, `<node>-0`, `<resource>-0`.
static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)<\s*(?:generated|node|resource)\s*(?:>\s*-\s*(\d+)|[-_]\s*(\d+)\s*>)")
        .unwrap_or_else(|e| unreachable!("static regex: {e}"))
});

/// The task ids referenced in a string, in order of appearance.
pub fn references_in(text: &str) -> Vec<usize> {
    REFERENCE
        .captures_iter(text)
        .filter_map(|c| c.get(1).or_else(|| c.get(2)))
        .filter_map(|m| m.as_str().parse().ok())
        .collect()
}

/// Rewrite every reference spelling in `text` to the canonical `<GENERATED>-k`.
pub fn canonicalize_references(text: &str) -> String {
    REFERENCE
        .replace_all(text, |c: &regex::Captures<'_>| {
            let id = c.get(1).or_else(|| c.get(2)).map_or("", |m| m.as_str());
            format!("<GENERATED>-{id}")
        })
        .into_owned()
}

/// Replace every reference in `text`, in one pass, by `replacement(k)`.
pub fn replace_references(text: &str, mut replacement: impl FnMut(usize) -> String) -> String {
    REFERENCE
        .replace_all(text, |c: &regex::Captures<'_>| {
            match c
                .get(1)
                .or_else(|| c.get(2))
                .and_then(|m| m.as_str().parse().ok())
            {
                Some(id) => replacement(id),
                None => c[0].to_string(),
            }
        })
        .into_owned()
}

/// If `text` is nothing but references (separated by commas, spaces or
/// "and"), the ids it names; `None` when it holds other text too.
pub fn pure_references(text: &str) -> Option<Vec<usize>> {
    let ids = references_in(text);
    if ids.is_empty() {
        return None;
    }
    let rest = REFERENCE.replace_all(text, "");
    let leftover = rest
        .split(|c: char| c == ',' || c == ';' || c.is_whitespace())
        .filter(|w| !w.is_empty() && !w.eq_ignore_ascii_case("and"))
        .count();
    (leftover == 0).then_some(ids)
}

/// A task of a validated plan.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanTask {
    /// Unique id within the plan.
    pub id: usize,
    /// The task type (or the LLM's unknown name for it).
    pub task: TaskName,
    /// Ids of the tasks this one waits for.
    pub dep: Vec<usize>,
    /// Arguments: `text`, `image`, `audio`, `video` and any others, with
    /// references in canonical form.
    pub args: BTreeMap<String, Value>,
}

impl PlanTask {
    /// The known task type, if any.
    pub fn kind(&self) -> Option<TaskKind> {
        self.task.kind()
    }

    /// The ids referenced by this task's arguments.
    pub fn referenced_ids(&self) -> BTreeSet<usize> {
        self.args
            .values()
            .filter_map(Value::as_str)
            .flat_map(references_in)
            .collect()
    }

    /// The reference's JSON shape: `{"task", "id", "dep", "args"}` with
    /// `dep: [-1]` for no dependency.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(PlanTaskView::from(self)).unwrap_or(Value::Null)
    }
}

/// A validated, acyclic plan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Tasks in the order the LLM listed them (after unfolding).
    pub tasks: Vec<PlanTask>,
    /// Repairs made along the way (dropped dependencies, renamed tasks, ...),
    /// for the run record.
    pub warnings: Vec<String>,
}

impl Plan {
    /// The plan as the reference's JSON list.
    pub fn to_json(&self) -> Value {
        Value::Array(self.tasks.iter().map(PlanTask::to_json).collect())
    }

    /// Whether there is nothing to run.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The task with this id.
    pub fn get(&self, id: usize) -> Option<&PlanTask> {
        self.tasks.iter().find(|t| t.id == id)
    }

    /// Each task's level: 0 for tasks without dependencies, else one more
    /// than the deepest dependency.
    pub fn levels(&self) -> BTreeMap<usize, usize> {
        let mut levels: BTreeMap<usize, usize> = BTreeMap::new();
        // A validated plan is acyclic, so this settles within `len` rounds.
        for _ in 0..=self.tasks.len() {
            let mut changed = false;
            for task in &self.tasks {
                let level = task
                    .dep
                    .iter()
                    .map(|d| levels.get(d).map_or(1, |l| l + 1))
                    .max()
                    .unwrap_or(0);
                if levels.insert(task.id, level) != Some(level) {
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        levels
    }
}

/// Why a plan cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No JSON list or object could be found.
    #[error("the planner's answer contains no task list: {0}")]
    NoTaskList(String),
    /// Two tasks share an id.
    #[error("two tasks have id {0}")]
    DuplicateId(usize),
    /// An id is negative, fractional or not a number.
    #[error("task #{position} has an invalid id {id}")]
    InvalidId {
        /// Position in the list (0-based).
        position: usize,
        /// The id as written.
        id: String,
    },
    /// An argument references a task that does not exist.
    #[error("task {task} references <GENERATED>-{reference}, but there is no task {reference}")]
    UnknownReference {
        /// The referencing task.
        task: usize,
        /// The missing id.
        reference: usize,
    },
    /// The tasks' references form a cycle.
    #[error("tasks {0:?} depend on each other in a cycle")]
    Cycle(Vec<usize>),
    /// The planner reached its token limit before the plan was complete.
    #[error("the plan did not finish within the {0}-token limit")]
    Unfinished(usize),
}

/// Read the planner's raw answer into plan items (JSON objects).
///
/// Accepts code fences and prose around the JSON, a list with no enclosing
/// brackets, stray braces, single quotes and the other repairs of
/// [`lenient_json`]. An empty list yields no items.
pub fn parse_plan(answer: &str) -> Result<Vec<Map<String, Value>>, PlanError> {
    if let Some(fenced) = fenced_block(answer) {
        let items = read_items(fenced);
        if items.iter().any(|item| task_field(item).is_some()) {
            return Ok(items);
        }
    }
    let items = read_items(answer);
    if items.is_empty() && !is_empty_list(answer) {
        let preview: String = answer.trim().chars().take(120).collect();
        return Err(PlanError::NoTaskList(format!("{preview:?}")));
    }
    Ok(items)
}

/// Whether the text's first JSON-looking value is an empty list.
fn is_empty_list(text: &str) -> bool {
    let text = fenced_block(text)
        .filter(|f| f.contains('['))
        .unwrap_or(text);
    text.find('[').is_some_and(|start| {
        matches!(lenient_json::parse_value_at(text, start), Ok((Value::Array(items), _)) if items.is_empty())
    })
}

/// The objects of the first list in `text`, or failing that every object in it.
fn read_items(text: &str) -> Vec<Map<String, Value>> {
    let first_bracket = text.find('[');
    let first_brace = text.find('{');
    if let Some(b) = first_bracket
        && first_brace.is_none_or(|o| b < o)
        && let Ok((Value::Array(items), _)) = lenient_json::parse_value_at(text, b)
    {
        let objects = unwrap_items(items);
        if !objects.is_empty() {
            return objects;
        }
    }
    unwrap_items(lenient_json::scan_objects(text))
}

/// Keep the objects of a list, descending into a `{"tasks": [...]}` wrapper.
fn unwrap_items(items: Vec<Value>) -> Vec<Map<String, Value>> {
    let mut out = Vec::new();
    for item in items {
        let Value::Object(map) = item else { continue };
        if task_field(&map).is_none()
            && let Some(Value::Array(inner)) = map
                .values()
                .find(|v| v.as_array().is_some_and(|a| a.iter().any(Value::is_object)))
        {
            out.extend(unwrap_items(inner.clone()));
            continue;
        }
        out.push(map);
    }
    out
}

/// The body of the first code fence, if there is one.
fn fenced_block(text: &str) -> Option<&str> {
    let start = text.find("```")?;
    let after = &text[start + 3..];
    let body_start = after.find('\n').map_or(after.len(), |n| n + 1);
    let body = &after[body_start..];
    Some(body.find("```").map_or(body, |end| &body[..end]))
}

fn task_field(map: &Map<String, Value>) -> Option<&str> {
    ["task", "task_type", "type", "name"]
        .iter()
        .find_map(|k| map.get(*k)?.as_str())
}

/// Turn plan items into a validated plan: parse names, ids and dependencies,
/// canonicalise references, unfold multi-reference arguments, rebuild
/// dependencies and reject unknown references and cycles.
pub fn postprocess(items: Vec<Map<String, Value>>) -> Result<Plan, PlanError> {
    let mut warnings = Vec::new();
    let mut tasks = Vec::new();
    let mut seen = BTreeSet::new();
    for (position, item) in items.iter().enumerate() {
        let Some((task, explicit)) = read_task(position, item, &mut warnings)? else {
            continue;
        };
        if !seen.insert(task.id) {
            return Err(PlanError::DuplicateId(task.id));
        }
        tasks.push((task, explicit));
    }

    let tasks = unfold(tasks, &mut warnings);
    let ids: BTreeSet<usize> = tasks.iter().map(|(t, _)| t.id).collect();
    let mut plan_tasks = Vec::with_capacity(tasks.len());
    for (task, explicit) in tasks {
        plan_tasks.push(settle_task(task, explicit, &ids, &mut warnings)?);
    }
    check_acyclic(&plan_tasks)?;
    Ok(Plan {
        tasks: plan_tasks,
        warnings,
    })
}

/// One plan item read into a task and its explicit dependencies (`None`,
/// with a warning, for an item without a task field). `position` is the
/// item's place in the list, the id of a task that gives none.
pub(crate) fn read_task(
    position: usize,
    item: &Map<String, Value>,
    warnings: &mut Vec<String>,
) -> Result<Option<(PlanTask, Vec<usize>)>, PlanError> {
    let Some(name) = task_field(item) else {
        warnings.push(format!(
            "ignored item #{position}: it has no \"task\" field"
        ));
        return Ok(None);
    };
    let task = TaskName::parse(name);
    if let TaskName::Unknown(n) = &task {
        warnings.push(format!("task #{position} has an unknown task type {n:?}"));
    }
    let id = match item.get("id") {
        None | Some(Value::Null) => position,
        Some(v) => parse_id(v).ok_or_else(|| PlanError::InvalidId {
            position,
            id: v.to_string(),
        })?,
    };
    let explicit_dep = item.get("dep").map(parse_deps).unwrap_or_default();
    let args = parse_args(item);
    Ok(Some((
        PlanTask {
            id,
            task,
            dep: Vec::new(),
            args,
        },
        explicit_dep,
    )))
}

/// A task's final form, given the ids of every task in the plan: its
/// references checked, its dependencies rebuilt from them and its explicit
/// ones (dropping those on itself, on missing tasks and forward ones no
/// reference needs), a text-less control task converted.
pub(crate) fn settle_task(
    mut task: PlanTask,
    explicit: Vec<usize>,
    ids: &BTreeSet<usize>,
    warnings: &mut Vec<String>,
) -> Result<PlanTask, PlanError> {
    let referenced = task.referenced_ids();
    if let Some(&missing) = referenced.iter().find(|r| !ids.contains(r)) {
        return Err(PlanError::UnknownReference {
            task: task.id,
            reference: missing,
        });
    }
    let mut dep: BTreeSet<usize> = referenced;
    if dep.remove(&task.id) {
        warnings.push(format!(
            "task {}: it references its own output, which cannot exist",
            task.id
        ));
    }
    for d in explicit {
        if d == task.id {
            warnings.push(format!("task {}: dropped a dependency on itself", task.id));
        } else if !ids.contains(&d) {
            warnings.push(format!(
                "task {}: dropped a dependency on missing task {d}",
                task.id
            ));
        } else if d > task.id && !dep.contains(&d) {
            warnings.push(format!(
                "task {}: dropped a forward dependency on task {d}",
                task.id
            ));
        } else {
            dep.insert(d);
        }
    }
    task.dep = dep.into_iter().collect();
    convert_textless_control(&mut task, warnings);
    Ok(task)
}

/// Read and post-process in one step.
pub fn parse_and_postprocess(answer: &str) -> Result<Plan, PlanError> {
    postprocess(parse_plan(answer)?)
}

/// The largest task id accepted; larger ones are LLM noise.
const MAX_TASK_ID: u64 = 1_000_000;

fn parse_id(value: &Value) -> Option<usize> {
    let id = match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && (0.0..=MAX_TASK_ID as f64).contains(f))
                .map(|f| f as u64)
        }),
        Value::String(s) => {
            let s = s.trim();
            let s = match s.strip_prefix("task") {
                Some(rest) => rest.trim_start_matches(['-', '_', ' ', '#']),
                None => s,
            };
            s.parse().ok()
        }
        _ => None,
    }?;
    (id <= MAX_TASK_ID)
        .then_some(id)
        .and_then(|id| usize::try_from(id).ok())
}

/// `dep` as a number, a list, a string ("0,1"), or references; `-1` and
/// anything unreadable mean "none".
fn parse_deps(value: &Value) -> Vec<usize> {
    match value {
        Value::Array(items) => items.iter().flat_map(parse_deps).collect(),
        Value::String(s) => {
            let refs = references_in(s);
            if !refs.is_empty() {
                return refs;
            }
            s.split([',', ' ', ';'])
                .filter_map(|p| p.trim().parse::<usize>().ok())
                .collect()
        }
        other => parse_id(other).into_iter().collect(),
    }
}

/// Arguments from `args` (an object, or a JSON string of one), falling back to
/// resource keys at the top level of the item.
fn parse_args(item: &Map<String, Value>) -> BTreeMap<String, Value> {
    let source: Map<String, Value> = match item.get("args").or_else(|| item.get("arguments")) {
        Some(Value::Object(map)) => map.clone(),
        Some(Value::String(s)) => match lenient_json::parse_first(s) {
            Ok(Value::Object(map)) => map,
            _ => Map::from_iter([("text".to_string(), Value::String(s.clone()))]),
        },
        _ => item
            .iter()
            .filter(|(k, _)| ResourceKind::from_arg_name(k).is_some())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    };
    source
        .into_iter()
        .map(|(key, value)| {
            let key = key.trim().to_ascii_lowercase();
            let value = match value {
                Value::String(s) => Value::String(canonicalize_references(s.trim())),
                other => other,
            };
            (key, value)
        })
        .collect()
}

/// One task per reference when an argument holds several
/// (`"<GENERATED>-0,<GENERATED>-1"`). The first copy keeps the original id;
/// the others get fresh ids, and later references to the original id are
/// widened to every copy (so a later task sees all of them).
fn unfold(
    tasks: Vec<(PlanTask, Vec<usize>)>,
    warnings: &mut Vec<String>,
) -> Vec<(PlanTask, Vec<usize>)> {
    let mut next_id = tasks
        .iter()
        .map(|(t, _)| t.id.saturating_add(1))
        .max()
        .unwrap_or(0);
    let mut copies: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    let mut out = Vec::with_capacity(tasks.len());
    for (mut task, explicit) in tasks {
        for value in task.args.values_mut() {
            let Some(ids) = value.as_str().and_then(pure_references) else {
                continue;
            };
            if ids.iter().any(|id| copies.contains_key(id)) {
                let widened: Vec<String> = ids
                    .iter()
                    .flat_map(|id| copies.get(id).cloned().unwrap_or_else(|| vec![*id]))
                    .map(reference)
                    .collect();
                *value = Value::String(widened.join(","));
            }
        }
        let multi = task.args.iter().find_map(|(key, value)| {
            let ids = pure_references(value.as_str()?)?;
            (ids.len() > 1).then(|| (key.clone(), ids))
        });
        let Some((key, ids)) = multi else {
            out.push((task, explicit));
            continue;
        };
        let mut new_ids = Vec::new();
        let kept_deps: Vec<usize> = explicit
            .iter()
            .copied()
            .filter(|d| !ids.contains(d))
            .collect();
        for (n, &referenced) in ids.iter().enumerate() {
            let mut copy = task.clone();
            if n > 0 {
                copy.id = next_id;
                next_id = next_id.saturating_add(1);
            }
            new_ids.push(copy.id);
            copy.args
                .insert(key.clone(), Value::String(reference(referenced)));
            out.push((copy, kept_deps.clone()));
        }
        warnings.push(format!(
            "task {} had several references in {key:?}: unfolded into tasks {new_ids:?}",
            task.id
        ));
        copies.insert(task.id, new_ids);
    }
    out
}

/// A conditioned text-to-image task without text runs as the matching control
/// task instead, as in the reference.
fn convert_textless_control(task: &mut PlanTask, warnings: &mut Vec<String>) {
    let Some(kind) = task.kind() else { return };
    let has_text = task
        .args
        .get("text")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    if let (false, Some(replacement)) = (has_text, kind.without_text()) {
        warnings.push(format!(
            "task {}: {kind} has no text, running {replacement}",
            task.id
        ));
        task.task = TaskName::Known(replacement);
    }
}

/// Kahn's algorithm over the dependencies; the tasks left over form cycles.
fn check_acyclic(tasks: &[PlanTask]) -> Result<(), PlanError> {
    let mut indegree: BTreeMap<usize, usize> = tasks.iter().map(|t| (t.id, t.dep.len())).collect();
    let mut ready: Vec<usize> = indegree
        .iter()
        .filter(|&(_, &d)| d == 0)
        .map(|(&id, _)| id)
        .collect();
    while let Some(done) = ready.pop() {
        indegree.remove(&done);
        for task in tasks.iter().filter(|t| t.dep.contains(&done)) {
            if let Some(d) = indegree.get_mut(&task.id) {
                *d -= 1;
                if *d == 0 {
                    ready.push(task.id);
                }
            }
        }
    }
    // What is left is on a cycle or downstream of one: peel off the nodes no
    // leftover node depends on until only the cycles remain.
    let mut left: BTreeSet<usize> = indegree.into_keys().collect();
    loop {
        let needed: BTreeSet<usize> = tasks
            .iter()
            .filter(|t| left.contains(&t.id))
            .flat_map(|t| t.dep.iter().copied())
            .collect();
        let before = left.len();
        left.retain(|id| needed.contains(id));
        if left.len() == before {
            break;
        }
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(PlanError::Cycle(left.into_iter().collect()))
    }
}

/// Serialisable view of a plan task, for records and events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanTaskView {
    /// Task type as shown.
    pub task: String,
    /// Task id.
    pub id: usize,
    /// Dependencies (`[-1]` for none).
    pub dep: Vec<i64>,
    /// Arguments.
    pub args: BTreeMap<String, Value>,
}

impl From<&PlanTask> for PlanTaskView {
    fn from(task: &PlanTask) -> Self {
        Self {
            task: task.task.as_str().to_string(),
            id: task.id,
            dep: if task.dep.is_empty() {
                vec![-1]
            } else {
                task.dep.iter().map(|&d| d as i64).collect()
            },
            args: task.args.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(text: &str) -> Plan {
        parse_and_postprocess(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    #[test]
    fn reference_spellings() {
        assert_eq!(
            references_in("<GENERATED>-0 <GENERATED-1> <generated>-2"),
            vec![0, 1, 2]
        );
        assert_eq!(
            references_in("<node-3> and <node>-4, <resource>-5 <GENERATED_6>"),
            vec![3, 4, 5, 6]
        );
        assert_eq!(
            canonicalize_references("see <GENERATED-2>!"),
            "see <GENERATED>-2!"
        );
        assert_eq!(
            pure_references("<GENERATED>-0, <GENERATED>-1"),
            Some(vec![0, 1])
        );
        assert_eq!(
            pure_references("<GENERATED>-0 and <node-1>"),
            Some(vec![0, 1])
        );
        assert_eq!(pure_references("translate <GENERATED>-0"), None);
        assert_eq!(pure_references("plain"), None);
    }

    #[test]
    fn levels_follow_the_longest_dependency_chain() {
        let p = plan(
            r#"[{"task": "text-to-speech", "id": 3, "dep": [2], "args": {"text": "<GENERATED>-2"}},
                {"task": "text-to-image", "id": 0, "dep": [-1], "args": {"text": "x"}},
                {"task": "image-to-text", "id": 2, "dep": [0, 1], "args": {"image": "<GENERATED>-0", "text": "<GENERATED>-1"}},
                {"task": "text-to-image", "id": 1, "dep": [0], "args": {"text": "<GENERATED>-0"}}]"#,
        );
        assert_eq!(p.levels(), BTreeMap::from([(0, 0), (1, 1), (2, 2), (3, 3)]));
    }

    #[test]
    fn well_formed_plan() {
        let p = plan(
            r#"[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "/a.jpg"}},
                {"task": "text-to-speech", "id": 1, "dep": [0], "args": {"text": "<GENERATED>-0"}}]"#,
        );
        assert_eq!(p.tasks.len(), 2);
        assert_eq!(p.tasks[0].dep, Vec::<usize>::new());
        assert_eq!(p.tasks[1].dep, vec![0]);
        assert_eq!(p.tasks[1].kind(), Some(TaskKind::TextToSpeech));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert_eq!(p.to_json()[0]["dep"], json!([-1]));
    }

    #[test]
    fn missing_brackets() {
        let p = plan(
            r#"{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "a.jpg"}}, {"task": "object-detection", "id": 1, "dep": [-1], "args": {"image": "a.jpg"}}"#,
        );
        assert_eq!(p.tasks.len(), 2);
    }

    #[test]
    fn generated_spelled_inside_brackets() {
        let p = plan(
            r#"[{"task": "text-to-image", "id": 0, "dep": [-1], "args": {"text": "a cat"}},
                {"task": "image-to-text", "id": 1, "dep": [0], "args": {"image": "<GENERATED-0>"}}]"#,
        );
        assert_eq!(p.tasks[1].args["image"], json!("<GENERATED>-0"));
        assert_eq!(p.tasks[1].dep, vec![0]);
    }

    #[test]
    fn stray_brace_after_object() {
        let p = plan(
            r#"[{"task": "image-classification", "id": 0, "dep": [-1], "args": {"image": "a.jpg"}}}, {"task": "image-to-text", "id": 1, "dep": [-1], "args": {"image": "a.jpg"}}]"#,
        );
        assert_eq!(p.tasks.len(), 2);
    }

    #[test]
    fn prose_and_code_fences() {
        let p = plan(
            "Here is the plan:\n```json\n[{\"task\": \"summarization\", \"id\": 0, \"dep\": [-1], \"args\": {\"text\": \"x\"}}]\n```\nLet me know!",
        );
        assert_eq!(p.tasks[0].kind(), Some(TaskKind::Summarization));
        let p = plan(
            "I will run: [{'task': 'object-detection', 'id': 0, 'dep': [-1], 'args': {'image': 'z.jpg'}}] ok?",
        );
        assert_eq!(p.tasks[0].args["image"], json!("z.jpg"));
    }

    #[test]
    fn single_quotes_and_other_spellings() {
        let p = plan(
            "[{'task': 'Image Classification', 'id': 0, 'dep': -1, 'args': {'image': '/e.jpg'}}, {'task': 'text_to_speech', 'id': '1', 'dep': '0', 'args': {'text': '<GENERATED>-0'}}]",
        );
        assert_eq!(p.tasks[0].kind(), Some(TaskKind::ImageClassification));
        assert_eq!(p.tasks[1].kind(), Some(TaskKind::TextToSpeech));
        assert_eq!(p.tasks[1].id, 1);
        assert_eq!(p.tasks[1].dep, vec![0]);
    }

    #[test]
    fn dep_as_number_or_list_and_node_refs() {
        let p = plan(
            r#"[{"task": "text-to-image", "id": 0, "dep": -1, "args": {"text": "a dog"}},
                {"task": "image-to-text", "id": 1, "dep": 0, "args": {"image": "<node-0>"}},
                {"task": "text-to-speech", "id": 2, "dep": "1", "args": {"text": "<node>-1"}}]"#,
        );
        assert_eq!(p.tasks[1].dep, vec![0]);
        assert_eq!(p.tasks[2].dep, vec![1]);
        assert_eq!(p.tasks[2].args["text"], json!("<GENERATED>-1"));
    }

    #[test]
    fn empty_plan() {
        assert!(plan("[]").is_empty());
        assert!(plan("  ```json\n[]\n```").is_empty());
    }

    #[test]
    fn no_task_list_is_an_error() {
        assert!(matches!(
            parse_plan("I cannot help with that."),
            Err(PlanError::NoTaskList(_))
        ));
    }

    #[test]
    fn wrapper_object() {
        let p = plan(
            r#"{"tasks": [{"task": "depth-estimation", "id": 0, "dep": [-1], "args": {"image": "a.png"}}]}"#,
        );
        assert_eq!(p.tasks[0].kind(), Some(TaskKind::DepthEstimation));
    }

    #[test]
    fn unknown_task_types_are_kept_with_a_warning() {
        let p = plan(r#"[{"task": "juggling", "id": 0, "dep": [-1], "args": {}}]"#);
        assert_eq!(p.tasks[0].task, TaskName::Unknown("juggling".into()));
        assert!(p.warnings[0].contains("juggling"));
    }

    #[test]
    fn unfolds_multi_reference_args() {
        let p = plan(
            r#"[{"task": "text-to-image", "id": 0, "dep": [-1], "args": {"text": "a cat"}},
                {"task": "text-to-image", "id": 1, "dep": [-1], "args": {"text": "a dog"}},
                {"task": "image-to-text", "id": 2, "dep": [0, 1], "args": {"image": "<GENERATED>-0,<GENERATED>-1"}},
                {"task": "text-to-speech", "id": 3, "dep": [2], "args": {"text": "<GENERATED>-2"}}]"#,
        );
        let shape = |kind: TaskKind| -> Vec<(usize, Vec<usize>, Value)> {
            p.tasks
                .iter()
                .filter(|t| t.kind() == Some(kind))
                .map(|t| {
                    (
                        t.id,
                        t.dep.clone(),
                        t.args.values().next().cloned().unwrap_or_default(),
                    )
                })
                .collect()
        };
        assert_eq!(
            shape(TaskKind::ImageToText),
            vec![
                (2, vec![0], json!("<GENERATED>-0")),
                (4, vec![1], json!("<GENERATED>-1"))
            ]
        );
        assert_eq!(
            shape(TaskKind::TextToSpeech),
            vec![
                (3, vec![2], json!("<GENERATED>-2")),
                (5, vec![4], json!("<GENERATED>-4"))
            ],
            "a task over an unfolded task is unfolded too"
        );
    }

    #[test]
    fn rebuilds_dependencies_from_references() {
        let p = plan(
            r#"[{"task": "text-to-image", "id": 0, "dep": [-1], "args": {"text": "x"}},
                {"task": "image-to-text", "id": 1, "dep": [-1], "args": {"image": "<GENERATED>-0"}}]"#,
        );
        assert_eq!(p.tasks[1].dep, vec![0]);
    }

    #[test]
    fn drops_self_forward_and_missing_explicit_deps() {
        let p = plan(
            r#"[{"task": "text-to-image", "id": 0, "dep": [0, 1, 7], "args": {"text": "x"}},
                {"task": "image-to-text", "id": 1, "dep": [0], "args": {"image": "a.jpg"}}]"#,
        );
        assert_eq!(p.tasks[0].dep, Vec::<usize>::new());
        assert_eq!(p.warnings.len(), 3, "{:?}", p.warnings);
        assert_eq!(
            p.tasks[1].dep,
            vec![0],
            "an explicit backward dependency is kept"
        );
    }

    #[test]
    fn unknown_reference_is_rejected() {
        let err = parse_and_postprocess(
            r#"[{"task": "image-to-text", "id": 0, "dep": [3], "args": {"image": "<GENERATED>-3"}}]"#,
        )
        .unwrap_err();
        assert_eq!(
            err,
            PlanError::UnknownReference {
                task: 0,
                reference: 3
            }
        );
        assert!(err.to_string().contains("no task 3"));
    }

    #[test]
    fn cycles_are_rejected() {
        let err = parse_and_postprocess(
            r#"[{"task": "image-to-text", "id": 0, "dep": [1], "args": {"image": "<GENERATED>-1"}},
                {"task": "image-to-image", "id": 1, "dep": [0], "args": {"image": "<GENERATED>-0"}}]"#,
        )
        .unwrap_err();
        assert_eq!(err, PlanError::Cycle(vec![0, 1]));
        let err = parse_and_postprocess(
            r#"[{"task": "image-to-text", "id": 0, "dep": [1], "args": {"image": "<GENERATED>-1"}},
                {"task": "image-to-image", "id": 1, "dep": [0], "args": {"image": "<GENERATED>-0"}},
                {"task": "text-to-speech", "id": 2, "dep": [1], "args": {"text": "<GENERATED>-1"}}]"#,
        )
        .unwrap_err();
        assert_eq!(
            err,
            PlanError::Cycle(vec![0, 1]),
            "task 2 only depends on the cycle"
        );
    }

    #[test]
    fn self_reference_is_dropped_with_a_warning() {
        let p = plan(
            r#"[{"task": "image-to-image", "id": 0, "dep": [-1], "args": {"image": "<GENERATED>-0"}}]"#,
        );
        assert!(p.tasks[0].dep.is_empty());
        assert!(p.warnings[0].contains("its own output"), "{:?}", p.warnings);
    }

    #[test]
    fn later_references_to_an_unfolded_task_see_every_copy() {
        let p = plan(
            r#"[{"task": "text-to-image", "id": 0, "dep": [-1], "args": {"text": "a cat"}},
                {"task": "text-to-image", "id": 1, "dep": [-1], "args": {"text": "a dog"}},
                {"task": "image-to-text", "id": 2, "dep": [0, 1], "args": {"image": "<GENERATED>-0,<GENERATED>-1"}},
                {"task": "summarization", "id": 3, "dep": [2], "args": {"text": "<GENERATED>-2"}}]"#,
        );
        let summaries: Vec<Vec<usize>> = p
            .tasks
            .iter()
            .filter(|t| t.kind() == Some(TaskKind::Summarization))
            .map(|t| t.dep.clone())
            .collect();
        assert_eq!(summaries, vec![vec![2], vec![4]]);
    }

    #[test]
    fn a_fence_after_the_plan_does_not_hide_it() {
        let p = plan(
            "[{\"task\": \"image-classification\", \"id\": 0, \"dep\": [-1], \"args\": {\"image\": \"a.jpg\"}}]\nThe result will look like:\n```json\n{\"label\": \"cat\"}\n```",
        );
        assert_eq!(p.tasks.len(), 1);
    }

    #[test]
    fn absurd_ids_are_rejected_and_string_minus_one_is_not_one() {
        for id in ["18446744073709551615", "1e300", "2000000"] {
            let text =
                format!(r#"[{{"task": "summarization", "id": {id}, "args": {{"text": "x"}}}}]"#);
            assert!(
                matches!(
                    parse_and_postprocess(&text),
                    Err(PlanError::InvalidId { .. })
                ),
                "{id}"
            );
        }
        assert!(matches!(
            parse_and_postprocess(
                r#"[{"task": "summarization", "id": "-1", "args": {"text": "x"}}]"#
            ),
            Err(PlanError::InvalidId { .. })
        ));
        let p = plan(r#"[{"task": "summarization", "id": "task-3", "args": {"text": "x"}}]"#);
        assert_eq!(p.tasks[0].id, 3);
    }

    #[test]
    fn forward_reference_without_cycle_is_kept() {
        let p = plan(
            r#"[{"task": "image-to-text", "id": 0, "dep": [1], "args": {"image": "<GENERATED>-1"}},
                {"task": "text-to-image", "id": 1, "dep": [-1], "args": {"text": "x"}}]"#,
        );
        assert_eq!(p.tasks[0].dep, vec![1]);
    }

    #[test]
    fn duplicate_and_invalid_ids() {
        assert_eq!(
            parse_and_postprocess(
                r#"[{"task": "summarization", "id": 0}, {"task": "translation", "id": 0}]"#
            ),
            Err(PlanError::DuplicateId(0))
        );
        assert!(matches!(
            parse_and_postprocess(r#"[{"task": "summarization", "id": -2}]"#),
            Err(PlanError::InvalidId { .. })
        ));
    }

    #[test]
    fn missing_ids_are_positional_and_args_may_be_top_level() {
        let p = plan(
            r#"[{"task": "summarization", "text": "long"}, {"task": "translation", "args": "hello"}]"#,
        );
        assert_eq!(p.tasks[0].id, 0);
        assert_eq!(p.tasks[0].args["text"], json!("long"));
        assert_eq!(p.tasks[1].args["text"], json!("hello"));
    }

    #[test]
    fn textless_control_conversion() {
        let p = plan(
            r#"[{"task": "seg-text-to-image", "id": 0, "dep": [-1], "args": {"image": "a.png"}}]"#,
        );
        assert_eq!(p.tasks[0].kind(), Some(TaskKind::ImageSegmentation));
        let p = plan(
            r#"[{"task": "canny-text-to-image", "id": 0, "dep": [-1], "args": {"image": "a.png", "text": "a house"}}]"#,
        );
        assert_eq!(p.tasks[0].kind(), Some(TaskKind::CannyTextToImage));
    }

    #[test]
    fn items_without_task_are_ignored_with_warning() {
        let p = plan(
            r#"[{"id": 0, "note": "thinking"}, {"task": "summarization", "id": 1, "args": {"text": "t"}}]"#,
        );
        assert_eq!(p.tasks.len(), 1);
        assert_eq!(p.warnings.len(), 1);
    }
}
