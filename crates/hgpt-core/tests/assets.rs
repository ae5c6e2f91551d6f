//! Data checks for the built-in model catalog and planning demonstrations.

use hgpt_core::shape::plan_arg_keys;
use hgpt_core::task::{ResourceKind, TaskKind};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashSet};

const CATALOG: &str = include_str!("../assets/catalog.jsonl");
const PLAN_DEMOS: &str = include_str!("../assets/demos/plan.json");

/// A known task name in its canonical spelling.
fn canonical_task(name: &str) -> Option<TaskKind> {
    TaskKind::parse(name).filter(|kind| kind.as_str() == name)
}

fn catalog_entries() -> Vec<(usize, Value)> {
    CATALOG
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("catalog line {}: invalid JSON: {e}", n + 1));
            (n + 1, value)
        })
        .collect()
}

fn is_model_id(id: &str) -> bool {
    let mut parts = id.split('/');
    let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    ok(org) && ok(name)
}

#[test]
fn catalog_lines_are_well_formed() {
    let entries = catalog_entries();
    assert!(
        entries.len() > 100,
        "catalog has only {} entries",
        entries.len()
    );
    let mut seen = HashSet::new();
    for (line, entry) in &entries {
        let obj = entry
            .as_object()
            .unwrap_or_else(|| panic!("line {line}: not an object"));
        let id = obj.get("id").and_then(Value::as_str).unwrap_or_default();
        assert!(is_model_id(id), "line {line}: bad id {id:?}");
        let task = obj.get("task").and_then(Value::as_str).unwrap_or_default();
        assert!(
            canonical_task(task).is_some(),
            "line {line}: unknown task {task:?}"
        );
        assert_eq!(
            obj.get("pipeline_tag").and_then(Value::as_str),
            Some(task),
            "line {line}: pipeline_tag differs from task"
        );
        assert!(
            !obj.contains_key("downloads"),
            "line {line}: invented downloads field"
        );
        if let Some(likes) = obj.get("likes") {
            assert!(likes.is_u64(), "line {line}: likes is not a count");
        }
        let description = obj
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default();
        assert!(
            !description.trim().is_empty(),
            "line {line}: empty description"
        );
        assert!(
            description.chars().count() < 400,
            "line {line}: description too long"
        );
        let tags = obj
            .get("meta")
            .and_then(|m| m.get("tags"))
            .and_then(Value::as_array);
        assert!(
            tags.is_some_and(|t| !t.is_empty() && t.iter().all(Value::is_string)),
            "line {line}: meta.tags must be a non-empty list of strings"
        );
        assert!(
            seen.insert((id.to_string(), task.to_string())),
            "line {line}: duplicate ({id}, {task})"
        );
    }
}

#[test]
fn catalog_covers_every_hub_task() {
    let mut per_task: BTreeMap<TaskKind, usize> = BTreeMap::new();
    for (_, entry) in catalog_entries() {
        if let Some(kind) = entry["task"].as_str().and_then(canonical_task) {
            *per_task.entry(kind).or_default() += 1;
        }
    }
    for kind in TaskKind::ALL
        .iter()
        .filter(|k| k.controlnet_model().is_none())
    {
        let count = per_task.get(kind).copied().unwrap_or(0);
        assert!(count >= 3, "{kind} has only {count} catalog entries");
    }
}

#[test]
fn catalog_lists_every_controlnet_model_as_local_only() {
    let entries = catalog_entries();
    let models: BTreeSet<&str> = TaskKind::ALL
        .iter()
        .filter_map(|k| k.controlnet_model())
        .collect();
    for model in models {
        let entry = entries
            .iter()
            .map(|(_, e)| e)
            .find(|e| e["id"] == model)
            .unwrap_or_else(|| panic!("{model} missing from the catalog"));
        let task = entry["task"].as_str().and_then(canonical_task);
        assert_eq!(
            task.and_then(TaskKind::controlnet_model),
            Some(model),
            "{model}: task does not map back to it"
        );
        let tags: Vec<&str> = entry["meta"]["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            tags.contains(&"controlnet") && tags.contains(&"local-only"),
            "{model}: tags {tags:?}"
        );
    }
}

#[test]
fn minilm_comes_first_for_embeddings() {
    let entries = catalog_entries();
    for task in ["sentence-similarity", "feature-extraction"] {
        let first = entries.iter().map(|(_, e)| e).find(|e| e["task"] == task);
        assert_eq!(
            first.and_then(|e| e["id"].as_str()),
            Some("sentence-transformers/all-MiniLM-L6-v2"),
            "first {task} model"
        );
    }
}

/// The `<GENERATED>-k` references in an arg value.
fn references(value: &str) -> Vec<i64> {
    value
        .match_indices("<GENERATED>-")
        .map(|(at, tag)| {
            let digits: String = value[at + tag.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits
                .parse()
                .unwrap_or_else(|_| panic!("reference without a number in {value:?}"))
        })
        .collect()
}

fn demo_messages() -> Vec<Value> {
    let value: Value = serde_json::from_str(PLAN_DEMOS).expect("plan.json is valid JSON");
    value.as_array().expect("plan.json is a JSON array").clone()
}

#[test]
fn demos_alternate_user_and_assistant() {
    let messages = demo_messages();
    assert!(
        messages.len() >= 16 && messages.len().is_multiple_of(2),
        "{} messages",
        messages.len()
    );
    for (i, message) in messages.iter().enumerate() {
        let expected = if i % 2 == 0 { "user" } else { "assistant" };
        assert_eq!(message["role"], expected, "message {i}");
        assert!(
            message["content"]
                .as_str()
                .is_some_and(|c| !c.trim().is_empty()),
            "message {i}: empty content"
        );
    }
}

#[test]
fn demo_plans_are_valid() {
    let messages = demo_messages();
    let mut task_types = BTreeSet::new();
    let mut empty_plans = 0;
    let mut chains = 0;
    for pair in messages.chunks(2) {
        let request = pair[0]["content"].as_str().unwrap_or_default();
        let content = pair[1]["content"].as_str().unwrap_or_default();
        assert!(
            !content.contains('\n'),
            "plan is not a single line: {content}"
        );
        let plan: Value =
            serde_json::from_str(content).unwrap_or_else(|e| panic!("plan {content}: {e}"));
        let tasks = plan
            .as_array()
            .unwrap_or_else(|| panic!("plan is not a list: {content}"));
        if tasks.is_empty() {
            empty_plans += 1;
        }
        let mut kinds: BTreeMap<i64, TaskKind> = BTreeMap::new();
        for (position, task) in tasks.iter().enumerate() {
            let name = task["task"].as_str().unwrap_or_default();
            let kind = canonical_task(name)
                .unwrap_or_else(|| panic!("unknown task {name:?} in {content}"));
            task_types.insert(kind);
            let id = task["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("id is not an integer in {content}"));
            assert_eq!(id, position as i64, "ids must count from 0 in {content}");
            let dep: Vec<i64> = task["dep"]
                .as_array()
                .unwrap_or_else(|| panic!("dep is not a list in {content}"))
                .iter()
                .map(|d| {
                    d.as_i64()
                        .unwrap_or_else(|| panic!("dep entry is not an integer in {content}"))
                })
                .collect();
            let args = task["args"]
                .as_object()
                .unwrap_or_else(|| panic!("args is not an object in {content}"));
            assert!(!args.is_empty(), "task {id} has no args in {content}");
            let mut referenced = BTreeSet::new();
            for (key, value) in args {
                let value = value
                    .as_str()
                    .unwrap_or_else(|| panic!("arg {key} is not a string in {content}"));
                // The keys the plan grammar allows for this task type.
                assert!(
                    plan_arg_keys(kind).contains(&key.as_str()),
                    "unexpected arg {key:?} for {kind:?} in {content}"
                );
                let resource = ResourceKind::from_arg_name(key);
                for k in references(value) {
                    assert!(
                        dep.contains(&k),
                        "task {id} uses <GENERATED>-{k} without it in dep: {content}"
                    );
                    assert!(
                        (0..id).contains(&k),
                        "task {id} refers to task {k}, not an earlier one: {content}"
                    );
                    assert_eq!(
                        kinds.get(&k).and_then(|src| src.output()),
                        resource,
                        "task {id}: arg {key} refers to task {k}, which does not generate that kind: {content}"
                    );
                    referenced.insert(k);
                }
                if value.starts_with('/') {
                    assert!(
                        request.contains(value),
                        "path {value} is not in the request {request:?}"
                    );
                }
            }
            if referenced.is_empty() {
                assert_eq!(
                    dep,
                    vec![-1],
                    "task {id} has no references, so dep must be [-1]: {content}"
                );
            } else {
                chains += 1;
                assert_eq!(
                    dep.iter().copied().collect::<BTreeSet<_>>(),
                    referenced,
                    "task {id}: dep != references"
                );
            }
            for input in kind.inputs().iter().filter(|r| **r != ResourceKind::Text) {
                assert!(
                    args.contains_key(input.arg_name()),
                    "task {id} ({kind}) lacks its {input} arg: {content}"
                );
            }
            kinds.insert(id, kind);
        }
    }
    assert!(empty_plans >= 1, "no demonstration of an empty plan");
    assert!(
        chains >= 3,
        "only {chains} dependent tasks across the demos"
    );
    assert!(
        task_types.len() >= 15,
        "demos use only {} task types: {task_types:?}",
        task_types.len()
    );
}
