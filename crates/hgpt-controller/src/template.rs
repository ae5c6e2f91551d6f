//! The model's own chat template (`tokenizer.chat_template`, a Jinja
//! template), rendered with minijinja the way transformers'
//! `apply_chat_template` renders it.

use crate::error::{ControllerError, Result};
use hgpt_core::backend::{ChatMessage, Role};
use minijinja::{Environment, Error, ErrorKind, context};

/// Fuel for one rendering: templates come from model files, so a runaway
/// template stops instead of hanging.
const TEMPLATE_FUEL: u64 = 5_000_000;

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

fn raise_exception(message: String) -> std::result::Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

fn template_err(e: Error) -> ControllerError {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(inner) = source {
        message.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    ControllerError::Template(message)
}

impl ChatTemplate {
    /// Compile `source` with the tokens it may refer to.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(template_err)?;
        env.set_syntax(syntax);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", |_format: String| "26 Jul 2024".to_string());
        env.add_template_owned("chat", source.to_string())
            .map_err(template_err)?;
        Ok(Self {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
        })
    }

    /// The prompt for `messages`, ending with the assistant's turn opened.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String> {
        let messages: Vec<_> = messages
            .iter()
            .map(|m| {
                let role = match m.role {
                    Role::System => "system",
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                context! { role => role, content => m.content.clone() }
            })
            .collect();
        let template = self.env.get_template("chat").map_err(template_err)?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos_token.clone(),
                eos_token => self.eos_token.clone(),
                // Qwen3 and other hybrid reasoners: answer directly.
                enable_thinking => false,
                tools => (),
            })
            .map_err(template_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_a_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let text = t
            .render(&[ChatMessage::system("S"), ChatMessage::user("hi")])
            .unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn python_string_methods_and_exceptions_work() {
        let t = ChatTemplate::new(
            "{% if messages[0].role == 'assistant' %}{{ raise_exception('bad order') }}{% endif %}{{ messages[0].content.strip() | upper }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        assert_eq!(t.render(&[ChatMessage::user("  x ")]).unwrap(), "X");
        let err = t.render(&[ChatMessage::assistant("x")]).unwrap_err();
        assert!(err.to_string().contains("bad order"), "{err}");
    }

    #[test]
    fn a_broken_template_is_an_error_not_a_panic() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
        let looping =
            ChatTemplate::new("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "", "")
                .unwrap();
        assert!(looping.render(&[ChatMessage::user("x")]).is_err());
    }
}
