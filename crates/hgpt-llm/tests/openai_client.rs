//! The OpenAI-compatible client against the fake server from hgpt-testkit.

use futures::StreamExt;
use hgpt_core::backend::{ChatMessage, ChatModel, ChatRequest, LlmError};
use hgpt_llm::{OpenAiClient, OpenAiConfig};
use hgpt_testkit::openai::{FakeLlm, LlmReply};
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

fn config(url: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: url.to_string(),
        model: "test-model".into(),
        retry_base_delay: Duration::from_millis(1),
        request_timeout: Duration::from_secs(20),
        ..OpenAiConfig::default()
    }
}

fn client(llm: &FakeLlm) -> OpenAiClient {
    OpenAiClient::new(config(&llm.url())).unwrap()
}

fn request(user: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage::system("You are a test."),
            ChatMessage::user(user),
        ],
        ..ChatRequest::default()
    }
}

/// Fails the test instead of hanging when the client waits far too long.
async fn guarded<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .expect("the call hung")
}

async fn collect(stream: hgpt_core::backend::TextStream) -> Vec<Result<String, LlmError>> {
    guarded(stream.collect::<Vec<_>>()).await
}

#[tokio::test]
async fn complete_returns_the_answer() {
    let llm = FakeLlm::scripted(vec![LlmReply::text("Hello, world!")]).await;
    let answer = client(&llm).complete(request("hi")).await.unwrap();
    assert_eq!(answer, "Hello, world!");
    assert_eq!(llm.call_count(), 1);
}

#[tokio::test]
async fn request_carries_model_messages_options_and_auth() {
    let llm = FakeLlm::scripted(vec![LlmReply::text("ok")]).await;
    let client = OpenAiClient::new(OpenAiConfig {
        api_key: Some("sk-test".into()),
        extra_headers: vec![("X-Title".into(), "hgpt".into())],
        ..config(&format!("{}/", llm.url()))
    })
    .unwrap();
    let mut logit_bias = BTreeMap::new();
    logit_bias.insert("1234".to_string(), -100.0);
    let req = ChatRequest {
        temperature: Some(0.0),
        max_tokens: Some(64),
        logit_bias,
        ..request("plan this")
    };
    client.complete(req).await.unwrap();
    let calls = llm.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.model, "test-model");
    assert_eq!(call.system(), "You are a test.");
    assert_eq!(call.last_user(), "plan this");
    assert_eq!(call.messages.len(), 2);
    assert_eq!(call.messages[0].role, "system");
    assert_eq!(call.messages[1].role, "user");
    assert!(!call.stream);
    assert_eq!(call.body["stream"], serde_json::json!(false));
    assert_eq!(call.temperature, Some(0.0));
    assert_eq!(call.max_tokens, Some(64));
    assert_eq!(call.body["logit_bias"]["1234"], serde_json::json!(-100.0));
    assert_eq!(call.authorization.as_deref(), Some("Bearer sk-test"));
    assert_eq!(call.header("x-title"), Some("hgpt"));
}

#[tokio::test]
async fn optional_fields_and_auth_are_left_out_when_unset() {
    let llm = FakeLlm::scripted(vec![LlmReply::text("ok")]).await;
    client(&llm).complete(request("hi")).await.unwrap();
    let call = &llm.calls()[0];
    assert_eq!(call.authorization, None);
    let body = call.body.as_object().unwrap();
    for absent in ["temperature", "max_tokens", "logit_bias"] {
        assert!(
            !body.contains_key(absent),
            "{absent} should be left out: {body:?}"
        );
    }
}

#[tokio::test]
async fn stream_yields_several_deltas_that_make_the_text() {
    let text = "The quick brown fox jumps over the lazy dog.";
    let llm = FakeLlm::scripted(vec![
        LlmReply::text(text).with_chunk_delay(Duration::from_millis(2)),
    ])
    .await;
    let items = collect(client(&llm).stream(request("hi")).await.unwrap()).await;
    let pieces: Vec<String> = items.into_iter().map(Result::unwrap).collect();
    assert!(pieces.len() >= 5, "expected several deltas, got {pieces:?}");
    assert!(pieces.iter().all(|p| !p.is_empty()));
    assert_eq!(pieces.concat(), text);
    let call = &llm.calls()[0];
    assert!(call.stream);
    assert_eq!(call.body["stream"], serde_json::json!(true));
}

#[tokio::test]
async fn server_error_is_retried_then_succeeds() {
    let llm = FakeLlm::scripted(vec![
        LlmReply::error(500, "boom"),
        LlmReply::text("recovered"),
    ])
    .await;
    let answer = client(&llm).complete(request("hi")).await.unwrap();
    assert_eq!(answer, "recovered");
    assert_eq!(llm.call_count(), 2);
}

#[tokio::test]
async fn stream_establishment_is_retried() {
    let llm = FakeLlm::scripted(vec![
        LlmReply::error(503, "warming up"),
        LlmReply::text("a b c"),
    ])
    .await;
    let items = collect(client(&llm).stream(request("hi")).await.unwrap()).await;
    let text: String = items.into_iter().map(Result::unwrap).collect();
    assert_eq!(text, "a b c");
    assert_eq!(llm.call_count(), 2);
}

#[tokio::test]
async fn retries_stop_after_max_retries() {
    let llm = FakeLlm::scripted(vec![LlmReply::error(503, "overloaded")]).await;
    let client = OpenAiClient::new(OpenAiConfig {
        max_retries: 2,
        ..config(&llm.url())
    })
    .unwrap();
    let error = client.complete(request("hi")).await.unwrap_err();
    assert_eq!(
        error,
        LlmError::Status {
            status: 503,
            message: "overloaded".into()
        }
    );
    assert_eq!(llm.call_count(), 3);
}

#[tokio::test]
async fn request_timeout_status_is_retried() {
    let llm = FakeLlm::scripted(vec![LlmReply::error(408, "slow"), LlmReply::text("ok")]).await;
    assert_eq!(client(&llm).complete(request("hi")).await.unwrap(), "ok");
    assert_eq!(llm.call_count(), 2);
}

#[tokio::test]
async fn retry_after_is_honoured_over_backoff() {
    // With an hour of backoff the test would hang unless `Retry-After: 0` wins.
    let llm = FakeLlm::scripted(vec![
        LlmReply::error(429, "slow down").with_header("Retry-After", "0"),
        LlmReply::text("ok"),
    ])
    .await;
    let client = OpenAiClient::new(OpenAiConfig {
        retry_base_delay: Duration::from_secs(3600),
        ..config(&llm.url())
    })
    .unwrap();
    assert_eq!(guarded(client.complete(request("hi"))).await.unwrap(), "ok");
    assert_eq!(llm.call_count(), 2);
}

#[tokio::test]
async fn unauthorized_fails_at_once_with_the_server_message() {
    let llm = FakeLlm::scripted(vec![
        LlmReply::error(401, "Incorrect API key provided"),
        LlmReply::text("no"),
    ])
    .await;
    let error = client(&llm).complete(request("hi")).await.unwrap_err();
    match &error {
        LlmError::Status { status, message } => {
            assert_eq!(*status, 401);
            assert!(message.contains("Incorrect API key provided"), "{message}");
        }
        other => panic!("expected a status error, got {other:?}"),
    }
    assert!(error.to_string().contains("Incorrect API key provided"));
    assert_eq!(llm.call_count(), 1);
}

#[tokio::test]
async fn stream_client_errors_fail_at_once() {
    let llm = FakeLlm::scripted(vec![
        LlmReply::error(400, "context too long"),
        LlmReply::text("no"),
    ])
    .await;
    let error = client(&llm).stream(request("hi")).await.err().unwrap();
    assert_eq!(
        error,
        LlmError::Status {
            status: 400,
            message: "context too long".into()
        }
    );
    assert_eq!(llm.call_count(), 1);
}

#[tokio::test]
async fn plain_text_error_bodies_become_the_message() {
    let llm = FakeLlm::scripted(vec![LlmReply::raw(404, "text/plain", "no such route")]).await;
    let error = client(&llm).complete(request("hi")).await.unwrap_err();
    assert_eq!(
        error,
        LlmError::Status {
            status: 404,
            message: "no such route".into()
        }
    );
}

#[test]
fn invalid_configuration_is_refused() {
    for base_url in ["", "localhost:8000/v1", "ftp://127.0.0.1/v1", "http://"] {
        let error = OpenAiClient::new(config(base_url)).unwrap_err();
        assert!(
            matches!(error, LlmError::NotConfigured(_)),
            "{base_url:?}: {error:?}"
        );
    }
    let error = OpenAiClient::new(OpenAiConfig {
        model: " ".into(),
        ..config("http://127.0.0.1:1/v1")
    })
    .unwrap_err();
    assert!(
        matches!(error, LlmError::NotConfigured(ref m) if m.contains("model")),
        "{error:?}"
    );
    let error = OpenAiClient::new(OpenAiConfig {
        extra_headers: vec![("bad header".into(), "x".into())],
        ..config("http://127.0.0.1:1/v1")
    })
    .unwrap_err();
    assert!(matches!(error, LlmError::NotConfigured(_)));
}

#[test]
fn endpoint_and_model_name() {
    let client = OpenAiClient::new(config("http://127.0.0.1:8000/v1/")).unwrap();
    assert_eq!(
        client.endpoint(),
        "http://127.0.0.1:8000/v1/chat/completions"
    );
    assert_eq!(client.model_name(), "test-model");
}

#[tokio::test]
async fn dead_port_gives_a_connect_error_after_retries() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let client = OpenAiClient::new(OpenAiConfig {
        max_retries: 2,
        ..config(&format!("http://127.0.0.1:{port}/v1"))
    })
    .unwrap();
    let error = guarded(client.complete(request("hi"))).await.unwrap_err();
    assert!(matches!(error, LlmError::Connect(_)), "{error:?}");
    let error = guarded(client.stream(request("hi"))).await.err().unwrap();
    assert!(matches!(error, LlmError::Connect(_)), "{error:?}");
}

#[tokio::test]
async fn garbage_answer_is_a_protocol_error() {
    let llm = FakeLlm::scripted(vec![LlmReply::raw(
        200,
        "application/json",
        "<html>not json</html>",
    )])
    .await;
    let error = client(&llm).complete(request("hi")).await.unwrap_err();
    assert!(
        matches!(error, LlmError::Protocol(ref m) if m.contains("not json")),
        "{error:?}"
    );
    // Malformed answers are not retried.
    assert_eq!(llm.call_count(), 1);
}

#[tokio::test]
async fn null_content_is_a_protocol_error() {
    let body = r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null}}]}"#;
    let llm = FakeLlm::scripted(vec![LlmReply::raw(200, "application/json", body)]).await;
    let error = client(&llm).complete(request("hi")).await.unwrap_err();
    assert!(
        matches!(error, LlmError::Protocol(ref m) if m.contains("content")),
        "{error:?}"
    );
}

#[tokio::test]
async fn json_answer_to_a_stream_request_is_yielded_whole() {
    let llm = FakeLlm::scripted(vec![LlmReply::text("all at once please").ignoring_stream()]).await;
    let items = collect(client(&llm).stream(request("hi")).await.unwrap()).await;
    assert_eq!(items, vec![Ok("all at once please".to_string())]);
    assert!(llm.calls()[0].stream);
}

#[tokio::test]
async fn event_stream_answer_to_a_plain_request_is_collected() {
    let body = ": hello\r\n\r\n\
                data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\r\n\r\n\
                data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\r\n\r\n\
                data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\r\n\r\n\
                data: [DONE]\r\n\r\n";
    let llm = FakeLlm::scripted(vec![LlmReply::raw(200, "text/event-stream", body)]).await;
    assert_eq!(client(&llm).complete(request("hi")).await.unwrap(), "Hello");
}

#[tokio::test]
async fn stream_handles_comments_crlf_usage_chunks_and_no_done_marker() {
    let body = ": keep-alive\r\n\r\n\
                data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\r\n\r\n\
                data: {\"choices\":[{\"delta\":{\"content\":\"one \"}}]}\r\n\r\n\
                data: {\"choices\":[],\"usage\":{\"total_tokens\":5}}\r\n\r\n\
                data: {\"choices\":\r\ndata: [{\"delta\":{\"content\":\"two\"}}]}\r\n\r\n";
    let llm = FakeLlm::scripted(vec![LlmReply::raw(
        200,
        "text/event-stream; charset=utf-8",
        body,
    )])
    .await;
    let items = collect(client(&llm).stream(request("hi")).await.unwrap()).await;
    assert_eq!(items, vec![Ok("one ".to_string()), Ok("two".to_string())]);
}

#[tokio::test]
async fn error_event_mid_stream_yields_an_error_item() {
    let body = "data: {\"choices\":[{\"delta\":{\"content\":\"partial\"}}]}\n\n\
                data: {\"error\":{\"message\":\"engine died\",\"code\":500}}\n\n\
                data: {\"choices\":[{\"delta\":{\"content\":\"never\"}}]}\n\n";
    let llm = FakeLlm::scripted(vec![LlmReply::raw(200, "text/event-stream", body)]).await;
    let items = collect(client(&llm).stream(request("hi")).await.unwrap()).await;
    assert_eq!(
        items,
        vec![
            Ok("partial".to_string()),
            Err(LlmError::Status {
                status: 500,
                message: "engine died".into()
            })
        ]
    );
}

#[tokio::test]
async fn broken_connection_mid_stream_yields_an_error_and_is_not_retried() {
    // Role chunk + two words, then the connection breaks.
    let llm = FakeLlm::scripted(vec![
        LlmReply::text("alpha beta gamma delta").breaking_after(3),
        LlmReply::text("should not be asked"),
    ])
    .await;
    let items = collect(client(&llm).stream(request("hi")).await.unwrap()).await;
    assert!(items.len() >= 2, "{items:?}");
    let (last, first) = items.split_last().unwrap();
    let text: String = first.iter().map(|i| i.clone().unwrap()).collect();
    assert_eq!(text, "alpha beta ");
    assert!(matches!(last, Err(LlmError::Connect(_))), "{last:?}");
    assert_eq!(llm.call_count(), 1);
}

#[tokio::test]
async fn slow_answer_times_out_without_retry() {
    let llm = FakeLlm::scripted(vec![
        LlmReply::text("late").with_delay(Duration::from_secs(30)),
    ])
    .await;
    let client = OpenAiClient::new(OpenAiConfig {
        request_timeout: Duration::from_millis(200),
        ..config(&llm.url())
    })
    .unwrap();
    let error = guarded(client.complete(request("hi"))).await.unwrap_err();
    assert_eq!(error, LlmError::Timeout(Duration::from_millis(200)));
    assert_eq!(llm.call_count(), 1);
}

#[tokio::test]
async fn silent_stream_times_out() {
    let llm = FakeLlm::scripted(vec![
        LlmReply::text("late words").with_chunk_delay(Duration::from_secs(30)),
    ])
    .await;
    let client = OpenAiClient::new(OpenAiConfig {
        request_timeout: Duration::from_millis(200),
        ..config(&llm.url())
    })
    .unwrap();
    let items = collect(guarded(client.stream(request("hi"))).await.unwrap()).await;
    assert_eq!(
        items,
        vec![Err(LlmError::Timeout(Duration::from_millis(200)))]
    );
}

#[tokio::test]
async fn fake_lists_its_model() {
    let llm =
        FakeLlm::start_with_model("my-model", std::sync::Arc::new(|_: &_| LlmReply::text("x")))
            .await;
    let models: serde_json::Value = reqwest::get(format!("{}/models", llm.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "my-model");
    assert_eq!(models["data"][0]["object"], "model");
    llm.shutdown().await;
}

#[tokio::test]
async fn fake_routes_on_the_conversation() {
    let llm = FakeLlm::from_fn(|call| {
        if call.system().contains("planner") {
            LlmReply::text("[]")
        } else if call.contains("magic") {
            LlmReply::text("abracadabra")
        } else {
            LlmReply::error(400, "unexpected")
        }
    })
    .await;
    let client = client(&llm);
    let plan = ChatRequest {
        messages: vec![
            ChatMessage::system("You are a planner."),
            ChatMessage::user("x"),
        ],
        ..ChatRequest::default()
    };
    assert_eq!(client.complete(plan).await.unwrap(), "[]");
    assert_eq!(
        client
            .complete(request("say the magic word"))
            .await
            .unwrap(),
        "abracadabra"
    );
    assert!(client.complete(request("other")).await.is_err());
    let calls = llm.calls();
    assert_eq!(calls.len(), 3);
    assert!(calls[0].received_at <= calls[1].received_at);
}

fn shaped(user: &str) -> ChatRequest {
    ChatRequest {
        shape: Some(hgpt_core::shape::OutputShape::Choice(
            hgpt_core::shape::ChoiceShape::new(vec!["a/x".into(), "b/y".into()]),
        )),
        ..request(user)
    }
}

#[tokio::test]
async fn shaped_requests_ask_for_structured_outputs() {
    let llm = FakeLlm::scripted(vec![LlmReply::text(r#"{"id": "a/x", "reason": "r"}"#)]).await;
    guarded(client(&llm).complete(shaped("pick")))
        .await
        .unwrap();
    let body = &llm.calls()[0].body;
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(
        body["response_format"]["json_schema"]["name"],
        "model_choice"
    );
    assert_eq!(
        body["response_format"]["json_schema"]["schema"]["properties"]["id"]["enum"],
        serde_json::json!(["a/x", "b/y"])
    );
    // Free-text requests carry no format.
    let llm = FakeLlm::scripted(vec![LlmReply::text("hello")]).await;
    guarded(client(&llm).complete(request("hi"))).await.unwrap();
    assert!(llm.calls()[0].body.get("response_format").is_none());
}

#[tokio::test]
async fn a_server_that_rejects_structured_outputs_is_asked_again_without_and_remembered() {
    let llm = FakeLlm::scripted(vec![
        LlmReply::error(400, "response_format is not supported by this server"),
        LlmReply::text(r#"{"id": "b/y", "reason": "r"}"#),
        LlmReply::text(r#"{"id": "a/x", "reason": "r"}"#),
    ])
    .await;
    let client = client(&llm);
    let first = guarded(client.complete(shaped("pick"))).await.unwrap();
    assert!(first.contains("b/y"));
    let second = guarded(client.complete(shaped("pick again")))
        .await
        .unwrap();
    assert!(second.contains("a/x"));
    let calls = llm.calls();
    assert_eq!(calls.len(), 3);
    assert!(calls[0].body.get("response_format").is_some());
    assert!(calls[1].body.get("response_format").is_none());
    assert!(
        calls[2].body.get("response_format").is_none(),
        "the refusal is remembered"
    );
}

#[tokio::test]
async fn other_refusals_are_not_retried_without_the_format() {
    let llm = FakeLlm::scripted(vec![LlmReply::error(400, "messages must not be empty")]).await;
    let err = guarded(client(&llm).complete(shaped("pick")))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LlmError::Status { status: 400, .. }),
        "{err:?}"
    );
    assert_eq!(llm.calls().len(), 1);
}
