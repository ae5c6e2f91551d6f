//! Fetching a model into the cache: only the files hgpt needs (configs,
//! tokenizer files, safetensors weights), never the other weight formats a
//! repository carries (PyTorch `.bin`, TensorFlow, Flax, ONNX, ...).

use crate::error::LocalError;
use crate::files::ModelCache;
use hf_hub::api::Progress;
use hf_hub::api::sync::ApiBuilder;
use std::path::PathBuf;

/// Tokenizer and vocabulary files worth fetching besides JSON.
const TOKENIZER_FILES: &[&str] = &[
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "vocab.json",
];

/// Folders of alternative exports that hgpt never reads.
const SKIPPED_FOLDERS: &[&str] = &[
    "onnx/",
    "openvino/",
    "coreml/",
    "tflite/",
    "runs/",
    "checkpoint",
];

/// The files of a repository that hgpt needs, from the repository's listing.
pub fn files_to_pull(id: &str, listing: &[String]) -> Result<Vec<String>, LocalError> {
    let wanted = |name: &str| {
        if SKIPPED_FOLDERS.iter().any(|f| name.starts_with(f)) {
            return false;
        }
        let base = name.rsplit('/').next().unwrap_or(name);
        let top_level = !name.contains('/');
        (name.ends_with(".json") && !name.contains("/checkpoint"))
            || TOKENIZER_FILES.contains(&base)
            || (top_level && name.ends_with(".safetensors"))
    };
    let files: Vec<String> = listing.iter().filter(|n| wanted(n)).cloned().collect();
    if !files.iter().any(|f| f.ends_with(".safetensors")) {
        return Err(LocalError::Unsupported(format!(
            "{id} has no safetensors weights; hgpt loads only safetensors"
        )));
    }
    Ok(files)
}

/// Download what `id` needs into `cache`, reporting each file's progress
/// through a fresh `progress()`; returns the snapshot folder.
pub fn pull<P: Progress>(
    cache: &ModelCache,
    id: &str,
    endpoint: Option<String>,
    token: Option<String>,
    mut progress: impl FnMut() -> P,
) -> Result<PathBuf, LocalError> {
    let failed = |e: hf_hub::api::sync::ApiError| LocalError::Load {
        model: id.to_string(),
        message: e.to_string(),
    };
    let mut builder = ApiBuilder::from_env()
        .with_cache_dir(cache.path().to_path_buf())
        .with_progress(false);
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if token.is_some() {
        builder = builder.with_token(token);
    }
    let api = builder.build().map_err(failed)?;
    let repo = api.model(id.to_string());
    let info = repo.info().map_err(failed)?;
    let listing: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let mut snapshot = None;
    for file in files_to_pull(id, &listing)? {
        let path = repo
            .download_with_progress(&file, progress())
            .map_err(failed)?;
        snapshot.get_or_insert_with(|| {
            let depth = file.matches('/').count() + 1;
            path.ancestors()
                .nth(depth)
                .map(PathBuf::from)
                .unwrap_or_default()
        });
    }
    Ok(snapshot.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn only_what_hgpt_reads() {
        let listing = names(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "model.safetensors",
            "pytorch_model.bin",
            "tf_model.h5",
            "flax_model.msgpack",
            "onnx/model.onnx",
            "onnx/config.json",
            "openvino/openvino_model.xml",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.txt",
            "1_Pooling/config.json",
            "modules.json",
            "sentence_bert_config.json",
        ]);
        assert_eq!(
            files_to_pull("org/m", &listing).unwrap(),
            names(&[
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "tokenizer_config.json",
                "vocab.txt",
                "1_Pooling/config.json",
                "modules.json",
                "sentence_bert_config.json",
            ])
        );
    }

    #[test]
    fn sharded_weights_and_no_safetensors() {
        let listing = names(&[
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
        ]);
        assert_eq!(files_to_pull("org/m", &listing).unwrap().len(), 4);
        let err =
            files_to_pull("org/old", &names(&["config.json", "pytorch_model.bin"])).unwrap_err();
        assert!(err.to_string().contains("no safetensors"), "{err}");
    }
}
