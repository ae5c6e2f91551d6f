//! The shapes the controller's structured answers must take, written as
//! grammars that make every sampled answer valid by construction.
//!
//! Two renderings of each shape:
//! - [`OutputShape::lark`]: a Lark grammar (llguidance's dialect) for
//!   constrained decoding in-process. The plan grammar is unrolled up to a
//!   maximum plan length so that it can say what JSON Schema cannot: task ids
//!   run 0, 1, 2, ... in order, and `dep` entries and `<GENERATED>-k`
//!   references name only earlier tasks. Every plan it accepts passes
//!   [`crate::plan::parse_and_postprocess`] without repair.
//! - [`OutputShape::json_schema`]: a JSON Schema for OpenAI-compatible servers
//!   (`response_format` structured outputs). It cannot order ids, so their
//!   answers still go through the lenient reader and the validator.

use crate::plan::reference;
use crate::task::{ResourceKind, TaskKind};
use serde_json::{Value, json};
use std::fmt::Write as _;

/// The shape an answer of the controller must take.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputShape {
    /// A task plan: `[{"task", "id", "dep", "args"}, ...]`.
    Plan(PlanShape),
    /// A model choice: `{"id": <one of the candidates>, "reason": "..."}`.
    Choice(ChoiceShape),
}

/// What a plan may contain.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanShape {
    /// The task types the planner may use.
    pub tasks: Vec<TaskKind>,
    /// The most tasks in one plan (ids `0..max_tasks`).
    pub max_tasks: usize,
    /// The longest string argument, in characters.
    pub max_arg_chars: usize,
}

impl PlanShape {
    /// The default limits over the given task types.
    pub fn new(tasks: Vec<TaskKind>) -> Self {
        Self {
            tasks,
            max_tasks: 10,
            max_arg_chars: 600,
        }
    }
}

/// What a model choice may contain.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceShape {
    /// The candidate model ids; the answer names exactly one.
    pub ids: Vec<String>,
    /// The longest reason, in characters.
    pub max_reason_chars: usize,
}

impl ChoiceShape {
    /// A choice among these ids with the default reason length.
    pub fn new(ids: Vec<String>) -> Self {
        Self {
            ids,
            max_reason_chars: 200,
        }
    }
}

/// The argument keys a plan may give a task of this type, in the order the
/// grammar writes them. All are strings.
pub fn plan_arg_keys(kind: TaskKind) -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = Vec::new();
    // Media first, then the text: "image" before "text" for VQA, like the demos.
    for resource in [
        ResourceKind::Image,
        ResourceKind::Audio,
        ResourceKind::Video,
        ResourceKind::Text,
    ] {
        if kind.inputs().contains(&resource) {
            keys.push(resource.arg_name());
        }
    }
    match kind {
        TaskKind::QuestionAnswering => keys.push("context"),
        TaskKind::SentenceSimilarity => keys.push("sentences"),
        TaskKind::ZeroShotClassification => keys.push("candidate_labels"),
        _ => {}
    }
    keys
}

/// A JSON string literal (also a valid Lark string literal).
fn quoted(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// A Lark literal that matches the JSON encoding of `text` (with its quotes).
fn json_literal(text: &str) -> String {
    quoted(&quoted(text))
}

/// A Lark terminal for a JSON string of at most `max` characters that holds no
/// `<` (so that a free string can never pose as a `<GENERATED>-k` reference).
fn string_terminal(name: &str, max: usize, allow_angle: bool) -> String {
    let excluded = if allow_angle { "" } else { "<" };
    format!("{name}: /\"([^\"\\\\{excluded}\\x00-\\x1F]|\\\\[\"\\\\\\/bfnrt]){{0,{max}}}\"/\n")
}

impl OutputShape {
    /// A short name for the shape (`plan`, `model_choice`), used as the JSON
    /// Schema's name and in diagnostics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Plan(_) => "plan",
            Self::Choice(_) => "model_choice",
        }
    }

    /// The most tokens any output of this shape can take, where that bound
    /// is small enough to always allow: a choice (each byte one token at
    /// worst, a reason character at most four bytes). `None` for a plan,
    /// whose bound is far beyond any useful limit.
    pub fn max_output_tokens(&self) -> Option<usize> {
        match self {
            Self::Plan(_) => None,
            Self::Choice(shape) => {
                let longest_id = shape.ids.iter().map(|id| json_literal(id).len()).max();
                Some(32 + longest_id.unwrap_or(0) + 4 * shape.max_reason_chars)
            }
        }
    }

    /// The shape as a Lark grammar for llguidance (no free whitespace: the
    /// exact layout of the demonstrations, so that most tokens are forced).
    pub fn lark(&self) -> String {
        match self {
            Self::Plan(shape) => plan_lark(shape),
            Self::Choice(shape) => choice_lark(shape),
        }
    }

    /// The shape as a JSON Schema for `response_format` on OpenAI-compatible
    /// servers. The root is an object (OpenAI requires it): a plan is
    /// `{"tasks": [...]}`, which the plan reader unwraps.
    pub fn json_schema(&self) -> Value {
        match self {
            Self::Plan(shape) => plan_schema(shape),
            Self::Choice(shape) => json!({
                "type": "object",
                "properties": {
                    "id": {"type": "string", "enum": shape.ids},
                    "reason": {"type": "string"},
                },
                "required": ["id", "reason"],
                "additionalProperties": false,
            }),
        }
    }
}

fn plan_lark(shape: &PlanShape) -> String {
    let max_tasks = shape.max_tasks.max(1);
    let mut g = String::new();
    g.push_str("start: \"[\" tasks_0? \"]\"\n");
    for i in 0..max_tasks {
        if i + 1 < max_tasks {
            let _ = writeln!(g, "tasks_{i}: task_{i} (\", \" tasks_{})?", i + 1);
        } else {
            let _ = writeln!(g, "tasks_{i}: task_{i}");
        }
        // {"task": "<type>", "id": i, "dep": [...], "args": {...}}
        let alternatives: Vec<String> = shape
            .tasks
            .iter()
            .map(|kind| {
                let args = plan_arg_keys(*kind)
                    .iter()
                    .map(|key| format!("{} val_{i}", quoted(&format!("{}: ", quoted(key)))))
                    .collect::<Vec<_>>()
                    .join(" \", \" ");
                format!("{} head_{i} {args}", json_literal(kind.as_str()))
            })
            .collect();
        let _ = writeln!(
            g,
            "task_{i}: \"{{\\\"task\\\": \" ({}) \"}}}}\"",
            alternatives.join(" | ")
        );
        let _ = writeln!(
            g,
            "head_{i}: \", \\\"id\\\": {i}, \\\"dep\\\": \" dep_{i} \", \\\"args\\\": {{\""
        );
        if i == 0 {
            g.push_str("dep_0: \"[-1]\"\n");
            g.push_str("val_0: ARG\n");
        } else {
            let _ = writeln!(
                g,
                "dep_{i}: \"[-1]\" | \"[\" earlier_{i} (\", \" earlier_{i})* \"]\""
            );
            let earlier: Vec<String> = (0..i).map(|k| quoted(&k.to_string())).collect();
            let _ = writeln!(g, "earlier_{i}: {}", earlier.join(" | "));
            let refs: Vec<String> = (0..i).map(|k| json_literal(&reference(k))).collect();
            let _ = writeln!(g, "val_{i}: ARG | {}", refs.join(" | "));
        }
    }
    g.push_str(&string_terminal("ARG", shape.max_arg_chars, false));
    g
}

fn choice_lark(shape: &ChoiceShape) -> String {
    let ids: Vec<String> = shape.ids.iter().map(|id| json_literal(id)).collect();
    let mut g = String::new();
    let _ = writeln!(
        g,
        "start: \"{{\\\"id\\\": \" id \", \\\"reason\\\": \" REASON \"}}\""
    );
    let _ = writeln!(g, "id: {}", ids.join(" | "));
    g.push_str(&string_terminal("REASON", shape.max_reason_chars, true));
    g
}

fn plan_schema(shape: &PlanShape) -> Value {
    let items: Vec<Value> = shape
        .tasks
        .iter()
        .map(|kind| {
            let keys = plan_arg_keys(*kind);
            let properties: serde_json::Map<String, Value> = keys
                .iter()
                .map(|key| (key.to_string(), json!({"type": "string"})))
                .collect();
            json!({
                "type": "object",
                "properties": {
                    "task": {"type": "string", "enum": [kind.as_str()]},
                    "id": {"type": "integer"},
                    "dep": {"type": "array", "items": {"type": "integer"}},
                    "args": {
                        "type": "object",
                        "properties": properties,
                        "required": keys,
                        "additionalProperties": false,
                    },
                },
                "required": ["task", "id", "dep", "args"],
                "additionalProperties": false,
            })
        })
        .collect();
    json!({
        "type": "object",
        "properties": {
            "tasks": {"type": "array", "items": {"anyOf": items}},
        },
        "required": ["tasks"],
        "additionalProperties": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(tasks: &[TaskKind], max_tasks: usize) -> PlanShape {
        PlanShape {
            tasks: tasks.to_vec(),
            max_tasks,
            max_arg_chars: 50,
        }
    }

    #[test]
    fn arg_keys_follow_the_task_inputs() {
        assert_eq!(plan_arg_keys(TaskKind::ObjectDetection), ["image"]);
        assert_eq!(
            plan_arg_keys(TaskKind::VisualQuestionAnswering),
            ["image", "text"]
        );
        assert_eq!(
            plan_arg_keys(TaskKind::QuestionAnswering),
            ["text", "context"]
        );
        assert_eq!(
            plan_arg_keys(TaskKind::AutomaticSpeechRecognition),
            ["audio"]
        );
        assert_eq!(
            plan_arg_keys(TaskKind::ZeroShotClassification),
            ["text", "candidate_labels"]
        );
    }

    #[test]
    fn plan_grammar_only_lets_tasks_name_earlier_ids() {
        let g = OutputShape::Plan(shape(&[TaskKind::ImageToText], 3)).lark();
        assert!(g.contains("dep_0: \"[-1]\"\n"), "{g}");
        assert!(g.contains("earlier_2: \"0\" | \"1\"\n"), "{g}");
        assert!(
            g.contains(r#"val_2: ARG | "\"<GENERATED>-0\"" | "\"<GENERATED>-1\"""#),
            "{g}"
        );
        assert!(!g.contains("tasks_3"), "unrolled past the limit: {g}");
        assert!(
            g.contains(r#"head_1: ", \"id\": 1, \"dep\": " dep_1"#),
            "{g}"
        );
        // A free string can never contain '<', so it cannot pose as a reference.
        assert!(
            g.contains(r#"ARG: /"([^"\\<\x00-\x1F]|\\["\\\/bfnrt]){0,50}"/"#),
            "{g}"
        );
    }

    #[test]
    fn choice_grammar_lists_exactly_the_candidates() {
        let g = OutputShape::Choice(ChoiceShape::new(vec!["a/b".into(), "c/\"d\"".into()])).lark();
        assert!(g.contains(r#"id: "\"a/b\"" | "\"c/\\\"d\\\"\"""#), "{g}");
    }

    #[test]
    fn schemas_have_object_roots() {
        let plan = OutputShape::Plan(shape(&[TaskKind::QuestionAnswering], 2)).json_schema();
        assert_eq!(plan["type"], "object");
        let item = &plan["properties"]["tasks"]["items"]["anyOf"][0];
        assert_eq!(item["properties"]["task"]["enum"][0], "question-answering");
        assert_eq!(
            item["properties"]["args"]["required"],
            json!(["text", "context"])
        );
        let choice = OutputShape::Choice(ChoiceShape::new(vec!["x/y".into()])).json_schema();
        assert_eq!(choice["properties"]["id"]["enum"], json!(["x/y"]));
    }

    #[test]
    fn the_longest_choice_fits_its_token_bound() {
        let ids = vec![
            "a/b".to_string(),
            "org/a-much-longer-model-name".to_string(),
        ];
        let shape = ChoiceShape::new(ids);
        // Every byte a token: the longest id, and a reason of four-byte characters.
        let longest = format!(
            r#"{{"id": "org/a-much-longer-model-name", "reason": "{}"}}"#,
            "😀".repeat(shape.max_reason_chars)
        );
        let bound = OutputShape::Choice(shape).max_output_tokens().unwrap();
        assert!(longest.len() <= bound, "{} > {bound}", longest.len());
        assert!(bound < 1000);
        assert_eq!(
            OutputShape::Plan(PlanShape::new(vec![])).max_output_tokens(),
            None
        );
    }
}
