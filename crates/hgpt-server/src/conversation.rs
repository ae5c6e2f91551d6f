//! Reading a conversation from a request body: the reference's and OpenAI's
//! `messages` lists (untrusted input, checked here), or a bare `request`.

use crate::error::ApiError;
use hgpt_core::backend::ChatMessage;
use serde_json::Value;

/// What a run is asked: the last user message, and the turns before it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Conversation {
    /// The request (the last user message).
    pub request: String,
    /// Earlier user and assistant turns, oldest first.
    pub history: Vec<ChatMessage>,
    /// The messages as stored with the run.
    pub messages: Value,
}

/// Longest request text accepted, in characters.
const MAX_REQUEST_CHARS: usize = 100_000;

/// The text of a message's `content`: a string, or OpenAI's list of parts
/// (text parts joined, other parts ignored), or null.
fn content_text(content: Option<&Value>, index: usize) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => Ok(parts
            .iter()
            .filter_map(|part| match part {
                Value::String(text) => Some(text.as_str()),
                Value::Object(map) => map.get("text").and_then(Value::as_str),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")),
        Some(_) => Err(ApiError::invalid(format!(
            "messages[{index}].content must be a string or a list of text parts"
        ))),
    }
}

/// Read `messages`: a non-empty list of `{role, content}` whose last entry
/// is a non-empty user message. System (and developer) messages are not
/// passed on: the controller's prompts are the server's.
pub(crate) fn from_messages(messages: &Value) -> Result<Conversation, ApiError> {
    let Some(list) = messages.as_array() else {
        return Err(ApiError::invalid(
            "`messages` must be a list of {\"role\", \"content\"} objects",
        ));
    };
    if list.is_empty() {
        return Err(ApiError::invalid("`messages` is empty"));
    }
    let mut turns = Vec::with_capacity(list.len());
    for (index, message) in list.iter().enumerate() {
        let Some(object) = message.as_object() else {
            return Err(ApiError::invalid(format!(
                "messages[{index}] must be an object with `role` and `content`"
            )));
        };
        let role = object
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid(format!("messages[{index}] has no `role` string")))?;
        let text = content_text(object.get("content"), index)?;
        match role {
            "user" => turns.push(ChatMessage::user(text)),
            "assistant" => turns.push(ChatMessage::assistant(text)),
            "system" | "developer" => {}
            other => {
                return Err(ApiError::invalid(format!(
                    "messages[{index}] has role {other:?}; expected user, assistant or system"
                )));
            }
        }
    }
    let last = list
        .last()
        .and_then(|m| m.get("role"))
        .and_then(Value::as_str);
    if last != Some("user") {
        return Err(ApiError::invalid(
            "the last message must be the user's request",
        ));
    }
    let request = turns.pop().map(|m| m.content).unwrap_or_default();
    checked(request, turns, messages.clone())
}

/// A conversation of one request.
pub(crate) fn from_request(request: &str) -> Result<Conversation, ApiError> {
    let messages = serde_json::json!([{"role": "user", "content": request}]);
    checked(request.to_string(), Vec::new(), messages)
}

fn checked(
    request: String,
    history: Vec<ChatMessage>,
    messages: Value,
) -> Result<Conversation, ApiError> {
    if request.trim().is_empty() {
        return Err(ApiError::invalid(
            "the request (last user message) is empty",
        ));
    }
    if request.chars().count() > MAX_REQUEST_CHARS {
        return Err(ApiError::invalid(format!(
            "the request is longer than {MAX_REQUEST_CHARS} characters"
        )));
    }
    Ok(Conversation {
        request,
        history,
        messages,
    })
}

/// The conversation of a body with `messages` (or, where `allow_request`,
/// a bare `request` string).
pub(crate) fn from_body(body: &Value, allow_request: bool) -> Result<Conversation, ApiError> {
    if !body.is_object() {
        return Err(ApiError::invalid("the body must be a JSON object"));
    }
    match (body.get("messages"), body.get("request")) {
        (Some(messages), _) => from_messages(messages),
        (None, Some(Value::String(request))) if allow_request => from_request(request),
        _ if allow_request => Err(ApiError::invalid(
            "the body needs `messages` (a list of {\"role\", \"content\"}) or `request` (a string)",
        )),
        _ => Err(ApiError::invalid(
            "the body needs `messages`: a list of {\"role\", \"content\"} objects",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hgpt_core::backend::Role;
    use serde_json::json;

    #[test]
    fn the_last_user_message_is_the_request() {
        let body = json!({"messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
            {"role": "user", "content": "describe /a.jpg"}
        ]});
        let conversation = from_body(&body, false).unwrap();
        assert_eq!(conversation.request, "describe /a.jpg");
        assert_eq!(conversation.history.len(), 2);
        assert_eq!(conversation.history[0].role, Role::User);
        assert_eq!(conversation.history[1].content, "hello");
        assert_eq!(conversation.messages, body["messages"]);
    }

    #[test]
    fn malformed_conversations_are_named() {
        let cases = [
            (json!({}), "needs `messages`"),
            (json!([]), "JSON object"),
            (json!({"messages": "hi"}), "must be a list"),
            (json!({"messages": []}), "is empty"),
            (json!({"messages": [3]}), "messages[0] must be an object"),
            (json!({"messages": [{"content": "x"}]}), "no `role`"),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "\"tool\"",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "must be a string",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
                "last message",
            ),
            (
                json!({"messages": [{"role": "user", "content": "  "}]}),
                "empty",
            ),
        ];
        for (body, expected) in cases {
            let error = from_body(&body, false).unwrap_err();
            assert_eq!(error.status, 400);
            assert!(
                error.message.contains(expected),
                "{body}: {}",
                error.message
            );
        }
    }

    #[test]
    fn a_bare_request_is_taken_where_allowed() {
        let body = json!({"request": "count the zebras"});
        assert_eq!(from_body(&body, true).unwrap().request, "count the zebras");
        assert!(from_body(&body, false).is_err());
        let long = "x".repeat(MAX_REQUEST_CHARS + 1);
        assert!(from_request(&long).is_err());
    }
}
