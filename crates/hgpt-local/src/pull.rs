//! Fetching a model into the cache: only the files hgpt needs (configs,
//! tokenizer files, safetensors weights, or `pytorch_model.bin` when a model
//! has no safetensors), never the other weight formats a repository carries
//! (TensorFlow, Flax, ONNX, ...). For a diffusers repository
//! (`model_index.json`): the folders its Stable Diffusion (or SDXL) pipeline
//! reads, float16 weight variants preferred.

use crate::error::LocalError;
use crate::files::{ModelCache, ModelFiles};
use crate::pipeline::ModelKind;
use hf_hub::api::Progress;
use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo};
use hgpt_core::backend::DownloadProgress;
use std::path::{Path, PathBuf};

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

/// The folders of a diffusers repository that the Stable Diffusion pipeline
/// reads (not `safety_checker/`, `feature_extractor/`, the single-file
/// checkpoints at the root, ...).
const DIFFUSERS_FOLDERS: &[&str] = &["unet", "vae", "text_encoder", "tokenizer", "scheduler"];

/// SDXL's second text encoder and tokenizer, fetched when the repository
/// has them.
const DIFFUSERS_XL_FOLDERS: &[&str] = &["text_encoder_2", "tokenizer_2"];

/// Weight files of a diffusers folder, in order of preference: the float16
/// variant (half the download; read as f32), full precision, a PyTorch
/// state dict.
const DIFFUSERS_WEIGHTS: &[&str] = &[
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "model.fp16.safetensors",
    "model.safetensors",
    "pytorch_model.bin",
];

/// The files of a diffusers repository hgpt needs: `model_index.json` and,
/// in each folder the pipeline reads, its JSON and tokenizer files and one
/// weight file (see [`DIFFUSERS_WEIGHTS`]).
fn diffusers_files_to_pull(id: &str, listing: &[String]) -> Result<Vec<String>, LocalError> {
    let mut files = vec!["model_index.json".to_string()];
    let optional = DIFFUSERS_XL_FOLDERS.iter().map(|f| (f, true));
    for (folder, is_optional) in DIFFUSERS_FOLDERS.iter().map(|f| (f, false)).chain(optional) {
        let inside: Vec<&str> = listing
            .iter()
            .filter_map(|name| name.strip_prefix(folder)?.strip_prefix('/'))
            .filter(|rest| !rest.contains('/'))
            .collect();
        if inside.is_empty() && is_optional {
            continue;
        }
        if inside.is_empty() {
            return Err(LocalError::Unsupported(format!(
                "{id} has no {folder}/ folder, which its Stable Diffusion pipeline needs"
            )));
        }
        files.extend(
            inside
                .iter()
                .filter(|name| name.ends_with(".json") || TOKENIZER_FILES.contains(name))
                .map(|name| format!("{folder}/{name}")),
        );
        let has_weights = matches!(*folder, "unet" | "vae" | "text_encoder" | "text_encoder_2");
        if has_weights {
            let weights = DIFFUSERS_WEIGHTS
                .iter()
                .find(|w| inside.contains(w))
                .ok_or_else(|| {
                    LocalError::Unsupported(format!(
                        "{id} has no safetensors or PyTorch weights in {folder}/"
                    ))
                })?;
            files.push(format!("{folder}/{weights}"));
        }
    }
    Ok(files)
}

/// The files of a repository that hgpt needs, from the repository's listing.
pub fn files_to_pull(id: &str, listing: &[String]) -> Result<Vec<String>, LocalError> {
    let has = |name: &str| listing.iter().any(|n| n == name);
    if has("model_index.json") && !has("config.json") {
        return diffusers_files_to_pull(id, listing);
    }
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
    let mut files: Vec<String> = listing.iter().filter(|n| wanted(n)).cloned().collect();
    if files.iter().any(|f| f.ends_with(".safetensors")) {
        return Ok(files);
    }
    // A main branch with only PyTorch weights: its single state dict.
    if listing.iter().any(|n| n == PYTORCH_WEIGHTS) {
        files.push(PYTORCH_WEIGHTS.to_string());
        return Ok(files);
    }
    let sharded = listing
        .iter()
        .any(|n| n.starts_with("pytorch_model-") && n.ends_with(".bin"));
    Err(LocalError::Unsupported(if sharded {
        format!(
            "{id} has no safetensors weights, and its PyTorch weights are sharded; hgpt reads \
             safetensors (one file or sharded) or a single pytorch_model.bin"
        )
    } else {
        format!("{id} has neither safetensors weights nor a pytorch_model.bin")
    }))
}

/// PyTorch's state dict file, read (never run) when a model has no
/// safetensors.
const PYTORCH_WEIGHTS: &str = "pytorch_model.bin";

/// The Hub API over `cache`.
fn api(
    cache: &ModelCache,
    id: &str,
    endpoint: Option<String>,
    token: Option<String>,
) -> Result<Api, LocalError> {
    let mut builder = ApiBuilder::from_env()
        .with_cache_dir(cache.path().to_path_buf())
        .with_progress(false);
    if let Some(endpoint) = endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if token.is_some() {
        builder = builder.with_token(token);
    }
    builder.build().map_err(|e| hub_error(id, e))
}

/// What a model on the Hub is, from its `config.json`, or a diffusers
/// repository's `model_index.json` (fetched into the cache, a few
/// kilobytes), before anything else is downloaded.
pub fn hub_model_kind(
    cache: &ModelCache,
    id: &str,
    endpoint: Option<String>,
    token: Option<String>,
) -> Result<ModelKind, LocalError> {
    let repo = api(cache, id, endpoint, token)?.model(id.to_string());
    let path = match repo.get("config.json") {
        Ok(path) => path,
        Err(no_config) => repo
            .get("model_index.json")
            .map_err(|_| hub_error(id, no_config))?,
    };
    ModelKind::read(&ModelFiles::from_dir(id, path.parent().unwrap_or(&path)))
}

/// The repository of `id` on the Hub and the files of it hgpt needs.
fn open_repo(
    cache: &ModelCache,
    id: &str,
    endpoint: Option<String>,
    token: Option<String>,
) -> Result<(Api, ApiRepo, Vec<String>), LocalError> {
    let failed = |e: ApiError| hub_error(id, e);
    let api = api(cache, id, endpoint, token)?;
    let repo = api.model(id.to_string());
    let info = repo.info().map_err(failed)?;
    let listing: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let files = files_to_pull(id, &listing)?;
    Ok((api, repo, files))
}

fn hub_error(id: &str, error: ApiError) -> LocalError {
    LocalError::Load {
        model: id.to_string(),
        message: error.to_string(),
    }
}

/// The snapshot folder that holds `file`, downloaded to `path`.
fn snapshot_of(path: &Path, file: &str) -> PathBuf {
    let depth = file.matches('/').count() + 1;
    path.ancestors()
        .nth(depth)
        .map(PathBuf::from)
        .unwrap_or_default()
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
    let (_, repo, files) = open_repo(cache, id, endpoint, token)?;
    let mut snapshot = None;
    for file in files {
        let path = repo
            .download_with_progress(&file, progress())
            .map_err(|e| hub_error(id, e))?;
        snapshot.get_or_insert_with(|| snapshot_of(&path, &file));
    }
    Ok(snapshot.unwrap_or_default())
}

/// [`pull`], refused before anything is written when the files add up to
/// more than `max_bytes`; `on_progress` gets the bytes done over all files.
pub fn pull_within(
    cache: &ModelCache,
    id: &str,
    endpoint: Option<String>,
    token: Option<String>,
    max_bytes: u64,
    on_progress: &mut dyn FnMut(DownloadProgress),
) -> Result<PathBuf, LocalError> {
    let (api, repo, files) = open_repo(cache, id, endpoint, token)?;
    let mut total = 0u64;
    for file in &files {
        let metadata = api
            .metadata(&repo.url(file))
            .map_err(|e| hub_error(id, e))?;
        total += metadata.size() as u64;
    }
    if total > max_bytes {
        return Err(LocalError::TooLarge {
            model: id.to_string(),
            bytes: total,
            limit: max_bytes,
        });
    }
    let mut counter = Counter {
        done: 0,
        total,
        on_progress,
    };
    (counter.on_progress)(DownloadProgress {
        done_bytes: 0,
        total_bytes: total,
    });
    let mut snapshot = None;
    for file in files {
        let path = repo
            .download_with_progress(&file, &mut counter)
            .map_err(|e| hub_error(id, e))?;
        snapshot.get_or_insert_with(|| snapshot_of(&path, &file));
    }
    (counter.on_progress)(DownloadProgress {
        done_bytes: total,
        total_bytes: total,
    });
    Ok(snapshot.unwrap_or_default())
}

/// Adds up the bytes of every file of one download.
struct Counter<'a> {
    done: u64,
    total: u64,
    on_progress: &'a mut dyn FnMut(DownloadProgress),
}

impl Progress for &mut Counter<'_> {
    fn init(&mut self, _size: usize, _filename: &str) {}
    fn update(&mut self, size: usize) {
        self.done = (self.done + size as u64).min(self.total);
        (self.on_progress)(DownloadProgress {
            done_bytes: self.done,
            total_bytes: self.total,
        });
    }
    fn finish(&mut self) {}
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

    /// stable-diffusion-v1-5/stable-diffusion-v1-5's files.
    const SD15: &[&str] = &[
        ".gitattributes",
        "README.md",
        "feature_extractor/preprocessor_config.json",
        "model_index.json",
        "safety_checker/config.json",
        "safety_checker/flax_model.msgpack",
        "safety_checker/model.fp16.safetensors",
        "safety_checker/model.safetensors",
        "safety_checker/pytorch_model.bin",
        "safety_checker/pytorch_model.fp16.bin",
        "scheduler/scheduler_config.json",
        "text_encoder/config.json",
        "text_encoder/flax_model.msgpack",
        "text_encoder/model.fp16.safetensors",
        "text_encoder/model.safetensors",
        "text_encoder/pytorch_model.bin",
        "text_encoder/pytorch_model.fp16.bin",
        "tokenizer/merges.txt",
        "tokenizer/special_tokens_map.json",
        "tokenizer/tokenizer_config.json",
        "tokenizer/vocab.json",
        "unet/config.json",
        "unet/diffusion_flax_model.msgpack",
        "unet/diffusion_pytorch_model.bin",
        "unet/diffusion_pytorch_model.fp16.bin",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.non_ema.bin",
        "unet/diffusion_pytorch_model.non_ema.safetensors",
        "unet/diffusion_pytorch_model.safetensors",
        "v1-5-pruned-emaonly.ckpt",
        "v1-5-pruned-emaonly.safetensors",
        "v1-5-pruned.ckpt",
        "v1-5-pruned.safetensors",
        "v1-inference.yaml",
        "vae/config.json",
        "vae/diffusion_flax_model.msgpack",
        "vae/diffusion_pytorch_model.bin",
        "vae/diffusion_pytorch_model.fp16.bin",
        "vae/diffusion_pytorch_model.fp16.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ];

    #[test]
    fn diffusers_repositories_pull_the_pipeline_folders_in_float16() {
        assert_eq!(
            files_to_pull("sd", &names(SD15)).unwrap(),
            names(&[
                "model_index.json",
                "unet/config.json",
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "vae/config.json",
                "vae/diffusion_pytorch_model.fp16.safetensors",
                "text_encoder/config.json",
                "text_encoder/model.fp16.safetensors",
                "tokenizer/merges.txt",
                "tokenizer/special_tokens_map.json",
                "tokenizer/tokenizer_config.json",
                "tokenizer/vocab.json",
                "scheduler/scheduler_config.json",
            ])
        );
        // stabilityai/sd-turbo: a single-file checkpoint at the root too.
        let turbo = names(&[
            "README.md",
            "model_index.json",
            "sd_turbo.safetensors",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json",
            "text_encoder/model.fp16.safetensors",
            "text_encoder/model.safetensors",
            "tokenizer/merges.txt",
            "tokenizer/special_tokens_map.json",
            "tokenizer/tokenizer_config.json",
            "tokenizer/vocab.json",
            "unet/config.json",
            "unet/diffusion_pytorch_model.fp16.safetensors",
            "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json",
            "vae/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.safetensors",
        ]);
        let files = files_to_pull("stabilityai/sd-turbo", &turbo).unwrap();
        assert_eq!(files.len(), 12);
        assert!(!files.iter().any(|f| f == "sd_turbo.safetensors"));
        assert!(files.contains(&"unet/diffusion_pytorch_model.fp16.safetensors".to_string()));
        assert!(!files.iter().any(|f| f.contains("_2/")));
        // stabilityai/sdxl-turbo: the second text encoder and tokenizer too.
        let xl: Vec<String> = turbo
            .iter()
            .cloned()
            .chain(names(&[
                "text_encoder_2/config.json",
                "text_encoder_2/model.fp16.safetensors",
                "text_encoder_2/model.safetensors",
                "tokenizer_2/merges.txt",
                "tokenizer_2/special_tokens_map.json",
                "tokenizer_2/tokenizer_config.json",
                "tokenizer_2/vocab.json",
            ]))
            .collect();
        let files = files_to_pull("stabilityai/sdxl-turbo", &xl).unwrap();
        assert_eq!(files.len(), 12 + 6);
        assert!(files.contains(&"text_encoder_2/model.fp16.safetensors".to_string()));
        assert!(files.contains(&"tokenizer_2/vocab.json".to_string()));
        // Full precision only; an ONNX export beside it is left alone.
        let full: Vec<String> = turbo
            .iter()
            .filter(|n| !n.contains(".fp16."))
            .cloned()
            .chain(names(&["unet/model.onnx", "onnx/unet/model.onnx"]))
            .collect();
        let files = files_to_pull("org/full", &full).unwrap();
        assert!(files.contains(&"unet/diffusion_pytorch_model.safetensors".to_string()));
        assert!(files.contains(&"text_encoder/model.safetensors".to_string()));
        assert!(!files.iter().any(|f| f.contains("onnx")));
        // A missing folder or weights are named.
        let no_vae: Vec<String> = turbo
            .iter()
            .filter(|n| !n.starts_with("vae/"))
            .cloned()
            .collect();
        let err = files_to_pull("org/novae", &no_vae).unwrap_err();
        assert!(err.to_string().contains("no vae/ folder"), "{err}");
        let no_weights: Vec<String> = turbo
            .iter()
            .filter(|n| !(n.starts_with("unet/") && n.contains("safetensors")))
            .cloned()
            .collect();
        let err = files_to_pull("org/nounet", &no_weights).unwrap_err();
        assert!(err.to_string().contains("weights in unet/"), "{err}");
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
        // PyTorch weights only: the state dict, not the other frameworks'.
        let listing = names(&["config.json", "pytorch_model.bin", "tf_model.h5"]);
        assert_eq!(
            files_to_pull("org/old", &listing).unwrap(),
            names(&["config.json", "pytorch_model.bin"])
        );
        let sharded = names(&[
            "config.json",
            "pytorch_model-00001-of-00002.bin",
            "pytorch_model-00002-of-00002.bin",
            "pytorch_model.bin.index.json",
        ]);
        let err = files_to_pull("org/big", &sharded).unwrap_err();
        assert!(err.to_string().contains("sharded"), "{err}");
        let err = files_to_pull("org/tf", &names(&["config.json", "tf_model.h5"])).unwrap_err();
        assert!(err.to_string().contains("neither"), "{err}");
    }
}
