//! Prompts of the four stages: templates, demonstrations, token counting and
//! chat-history trimming.
//!
//! Defaults are files under `assets/` embedded in the binary; every template
//! and demonstration set can be replaced from the config file. Templates use
//! `{{name}}` placeholders, as the reference's do.

use crate::backend::{ChatMessage, Role};
use serde::Deserialize;
use tiktoken_rs::CoreBPE;

/// The template and demonstrations of one LLM stage.
#[derive(Debug, Clone, PartialEq)]
pub struct StagePrompt {
    /// The system prompt.
    pub system: String,
    /// Example exchanges sent between the system prompt and the request.
    pub demos: Vec<ChatMessage>,
    /// The user message template.
    pub user: String,
}

/// Every prompt hgpt sends.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompts {
    /// Stage 1: task planning (`{{task_types}}`; user: `{{context}}`, `{{input}}`).
    pub plan: StagePrompt,
    /// Stage 2: model selection (user: `{{input}}`, `{{task}}`, `{{candidates}}`).
    pub select: StagePrompt,
    /// Stage 4: response (user: `{{input}}`, `{{results}}`).
    pub answer: StagePrompt,
    /// System prompt of plain-chat answers.
    pub chat_system: String,
    /// Instruction for text tasks run on the controller LLM
    /// (`{{task}}`, `{{instructions}}`, `{{text}}`).
    pub text_task: String,
}

/// Why a prompt file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid demonstrations in {source_name}: {message}")]
pub struct DemoError {
    /// The file.
    pub source_name: String,
    /// What is wrong.
    pub message: String,
}

#[derive(Deserialize)]
struct DemoMessage {
    role: String,
    content: String,
}

/// Read demonstrations in the reference's JSON demo format: a list of
/// `{"role": "user"|"assistant"|"system", "content": "..."}`.
pub fn parse_demos(json: &str, source_name: &str) -> Result<Vec<ChatMessage>, DemoError> {
    let error = |message: String| DemoError {
        source_name: source_name.to_string(),
        message,
    };
    let messages: Vec<DemoMessage> = serde_json::from_str(json)
        .map_err(|e| error(format!("not a JSON list of messages: {e}")))?;
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "user" => Role::User,
                "assistant" => Role::Assistant,
                "system" => Role::System,
                other => return Err(error(format!("message {i} has unknown role {other:?}"))),
            };
            Ok(ChatMessage {
                role,
                content: m.content,
            })
        })
        .collect()
}

impl Default for Prompts {
    fn default() -> Self {
        let demos = |json: &str, name: &str| parse_demos(json, name).unwrap_or_default();
        Self {
            plan: StagePrompt {
                system: include_str!("../assets/prompts/plan_system.md")
                    .trim()
                    .to_string(),
                demos: demos(include_str!("../assets/demos/plan.json"), "plan.json"),
                user: include_str!("../assets/prompts/plan_user.md")
                    .trim()
                    .to_string(),
            },
            select: StagePrompt {
                system: include_str!("../assets/prompts/select_system.md")
                    .trim()
                    .to_string(),
                demos: demos(include_str!("../assets/demos/select.json"), "select.json"),
                user: include_str!("../assets/prompts/select_user.md")
                    .trim()
                    .to_string(),
            },
            answer: StagePrompt {
                system: include_str!("../assets/prompts/answer_system.md")
                    .trim()
                    .to_string(),
                demos: demos(include_str!("../assets/demos/answer.json"), "answer.json"),
                user: include_str!("../assets/prompts/answer_user.md")
                    .trim()
                    .to_string(),
            },
            chat_system: include_str!("../assets/prompts/chat_system.md")
                .trim()
                .to_string(),
            text_task: include_str!("../assets/prompts/text_task.md")
                .trim()
                .to_string(),
        }
    }
}

/// Fill `{{name}}` placeholders (spaces inside the braces allowed). Unknown
/// placeholders are left as written; values are inserted verbatim, never
/// re-expanded.
pub fn render(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let name = after[..end].trim();
                match values.iter().find(|(k, _)| *k == name) {
                    Some((_, value)) => out.push_str(value),
                    None => out.push_str(&rest[start..start + 2 + end + 2]),
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Counts tokens the way the controller model does: tiktoken for OpenAI model
/// names, an estimate (4 characters a token, rounded up) otherwise.
#[derive(Clone, Copy)]
pub struct TokenCounter {
    bpe: Option<&'static CoreBPE>,
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCounter")
            .field("exact", &self.bpe.is_some())
            .finish()
    }
}

impl TokenCounter {
    /// The counter for a model name.
    pub fn for_model(model: &str) -> Self {
        use tiktoken_rs::tokenizer::{Tokenizer, get_tokenizer};
        let bpe = match get_tokenizer(model) {
            Some(Tokenizer::O200kBase) => Some(tiktoken_rs::o200k_base_singleton()),
            Some(Tokenizer::Cl100kBase) => Some(tiktoken_rs::cl100k_base_singleton()),
            Some(Tokenizer::P50kBase) => Some(tiktoken_rs::p50k_base_singleton()),
            Some(Tokenizer::R50kBase | Tokenizer::Gpt2) => Some(tiktoken_rs::r50k_base_singleton()),
            Some(Tokenizer::P50kEdit) => Some(tiktoken_rs::p50k_edit_singleton()),
            None => None,
        };
        Self { bpe }
    }

    /// A counter that always estimates.
    pub fn estimating() -> Self {
        Self { bpe: None }
    }

    /// Whether counts are exact for the model.
    pub fn is_exact(&self) -> bool {
        self.bpe.is_some()
    }

    /// Tokens in a text.
    pub fn count(&self, text: &str) -> usize {
        match self.bpe {
            Some(bpe) => bpe.encode_with_special_tokens(text).len(),
            None => text.chars().count().div_ceil(4),
        }
    }

    /// Tokens of a chat, with the per-message overhead of the chat format.
    pub fn count_messages(&self, messages: &[ChatMessage]) -> usize {
        3 + messages
            .iter()
            .map(|m| 4 + self.count(&m.content))
            .sum::<usize>()
    }
}

/// Drop the oldest history, two messages (one exchange) at a time, until the
/// prompt built from it leaves at least `reserve` tokens of `context_window`
/// for the answer. `build` renders the prompt from a history slice.
pub fn trim_history<'h>(
    history: &'h [ChatMessage],
    counter: &TokenCounter,
    context_window: usize,
    reserve: usize,
    build: impl Fn(&[ChatMessage]) -> Vec<ChatMessage>,
) -> &'h [ChatMessage] {
    let budget = context_window.saturating_sub(reserve);
    let mut start = 0;
    while start < history.len() && counter.count_messages(&build(&history[start..])) > budget {
        start = (start + 2).min(history.len());
    }
    &history[start..]
}

/// Render chat history as plain text for the planning prompt's `{{context}}`.
pub fn history_as_text(history: &[ChatMessage]) -> String {
    if history.is_empty() {
        return "(none)".to_string();
    }
    history
        .iter()
        .map(|m| {
            let who = match m.role {
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::System => "system",
            };
            format!("{who}: {}", m.content)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_fills_known_placeholders_only() {
        assert_eq!(
            render("a {{x}} b {{ y }} {{z}}", &[("x", "1"), ("y", "{{x}}")]),
            "a 1 b {{x}} {{z}}"
        );
        assert_eq!(render("open {{ never closed", &[]), "open {{ never closed");
    }

    #[test]
    fn default_prompts_have_demos_and_placeholders() {
        let p = Prompts::default();
        assert!(p.plan.system.contains("{{task_types}}"));
        assert!(p.plan.user.contains("{{input}}") && p.plan.user.contains("{{context}}"));
        assert!(p.select.user.contains("{{candidates}}"));
        assert!(p.answer.user.contains("{{results}}"));
        assert!(
            p.plan.demos.len() >= 16,
            "plan demos: {}",
            p.plan.demos.len()
        );
        assert_eq!(p.select.demos.len(), 2);
        assert_eq!(p.answer.demos.len(), 2);
    }

    #[test]
    fn demos_reject_unknown_roles() {
        let err = parse_demos(r#"[{"role": "robot", "content": "x"}]"#, "d.json").unwrap_err();
        assert!(err.to_string().contains("robot"));
        assert!(parse_demos("{}", "d.json").is_err());
    }

    #[test]
    fn token_counts() {
        let exact = TokenCounter::for_model("gpt-4o-mini");
        assert!(exact.is_exact());
        assert_eq!(exact.count("hello world"), 2);
        let estimate = TokenCounter::for_model("llama-3.1-8b");
        assert!(!estimate.is_exact());
        assert_eq!(estimate.count("abcdefghi"), 3);
    }

    #[test]
    fn trims_oldest_pairs_first() {
        let history: Vec<ChatMessage> = (0..6)
            .map(|i| {
                if i % 2 == 0 {
                    ChatMessage::user(format!("q{i} {}", "x".repeat(400)))
                } else {
                    ChatMessage::assistant(format!("a{i} {}", "y".repeat(400)))
                }
            })
            .collect();
        let counter = TokenCounter::estimating();
        let build = |h: &[ChatMessage]| h.to_vec();
        let all = trim_history(&history, &counter, 100_000, 800, build);
        assert_eq!(all.len(), 6);
        let kept = trim_history(&history, &counter, 1100, 800, build);
        assert_eq!(kept.len(), 2);
        assert!(kept[0].content.starts_with("q4"));
        let none = trim_history(&history, &counter, 10, 800, build);
        assert!(none.is_empty());
    }
}
