//! `hf-inference`, Hugging Face's own provider: the classic wire protocol
//! (`POST {base}/models/{id}`, `/pipeline/{task}` for embeddings and
//! similarity).

use super::{Call, Provider};
use crate::decode::decode_response;
use crate::request::{build_request, is_local_only};
use async_trait::async_trait;
use hgpt_core::backend::InferenceError;
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;

pub(crate) struct HfInference;

#[async_trait]
impl Provider for HfInference {
    fn name(&self) -> &'static str {
        "hf-inference"
    }

    fn serves(&self, task: TaskKind) -> bool {
        !is_local_only(task)
    }

    fn direct_base(&self, _task: TaskKind) -> &'static str {
        "https://router.huggingface.co/hf-inference"
    }

    async fn run(&self, call: &Call<'_>) -> Result<InferenceOutput, InferenceError> {
        let request = call.request;
        let wire = build_request(request)?;
        let id = &call.entry.provider_id;
        if !crate::valid_model_id(id) {
            return Err(call.malformed(format!("unusable provider model id {id:?}")));
        }
        let path = match wire.pipeline {
            Some(task) => format!("/models/{id}/pipeline/{task}"),
            None => format!("/models/{id}"),
        };
        let reply = call.post(&path, &wire, &[]).await?;
        decode_response(
            request.task,
            &request.model,
            reply.content_type.as_deref(),
            reply.body,
        )
    }
}
