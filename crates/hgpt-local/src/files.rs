//! Finding a model's files in the Hugging Face cache layout
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`).

use crate::error::LocalError;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use hf_hub::{Cache, Repo};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Where cached models live.
#[derive(Debug, Clone)]
pub struct ModelCache {
    cache: Cache,
}

impl ModelCache {
    /// The cache the environment names (`HF_HUB_CACHE`, `HF_HOME`), as the
    /// Python libraries find it.
    pub fn from_env() -> Self {
        match hub_dir(
            std::env::var_os("HF_HUB_CACHE"),
            std::env::var_os("HF_HOME"),
        ) {
            Some(dir) => Self::at(dir),
            None => Self {
                cache: Cache::from_env(),
            },
        }
    }

    /// A cache rooted at `dir` (the `hub` folder).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self {
            cache: Cache::new(dir.into()),
        }
    }

    /// The cache folder.
    pub fn path(&self) -> &Path {
        self.cache.path()
    }

    /// The model's files, whichever of them are present.
    pub fn model(&self, id: &str) -> ModelFiles {
        ModelFiles {
            id: id.to_string(),
            source: Source::Cache(self.cache.repo(Repo::model(id.to_string()))),
        }
    }
}

/// The hub folder the variables name: `HF_HUB_CACHE`, else `HF_HOME/hub`;
/// `None` leaves the default (`~/.cache/huggingface/hub`).
fn hub_dir(
    hub_cache: Option<std::ffi::OsString>,
    hf_home: Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    let non_empty = |v: std::ffi::OsString| (!v.is_empty()).then(|| PathBuf::from(v));
    hub_cache
        .and_then(non_empty)
        .or_else(|| hf_home.and_then(non_empty).map(|home| home.join("hub")))
}

/// The weight files hgpt reads, in order of preference, as a [`ModelFiles::require`]
/// name: safetensors, else a PyTorch state dict.
pub const WEIGHTS: &str = "model.safetensors|pytorch_model.bin";

/// A model's opened weights.
pub struct Weights {
    /// Tensors by name, as f32.
    pub vb: VarBuilder<'static>,
    /// Size of the weight file.
    pub bytes: u64,
    /// Which file they came from (for messages).
    pub file: String,
}

/// The files of one model: the `main` snapshot in the cache, or a plain folder.
#[derive(Debug)]
pub struct ModelFiles {
    id: String,
    source: Source,
}

#[derive(Debug)]
enum Source {
    Cache(hf_hub::CacheRepo),
    Dir(PathBuf),
}

impl ModelFiles {
    /// A model laid out as a plain folder (`config.json`, `model.safetensors`,
    /// ... side by side), as `save_pretrained` writes it.
    pub fn from_dir(id: &str, dir: impl Into<PathBuf>) -> Self {
        Self {
            id: id.to_string(),
            source: Source::Dir(dir.into()),
        }
    }

    /// The model id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A file's path, if present.
    pub fn get(&self, name: &str) -> Option<PathBuf> {
        let path = match &self.source {
            Source::Cache(repo) => repo.get(name)?,
            Source::Dir(dir) => dir.join(name),
        };
        path.is_file().then_some(path)
    }

    /// The first present of `a|b|...` alternatives.
    fn find(&self, names: &str) -> Option<PathBuf> {
        names.split('|').find_map(|n| self.get(n))
    }

    /// Whether every file named is cached (`a|b` names alternatives, as
    /// [`WEIGHTS`] does).
    pub fn has_all(&self, names: &[&str]) -> bool {
        names.iter().all(|n| self.find(n).is_some())
    }

    /// The paths of files that must exist (`a|b`: the first present of the
    /// alternatives), or an error naming every missing one.
    pub fn require(&self, names: &[&str]) -> Result<Vec<PathBuf>, LocalError> {
        let missing: Vec<String> = names
            .iter()
            .filter(|n| self.find(n).is_none())
            .map(|n| n.replace('|', " or "))
            .collect();
        if !missing.is_empty() {
            return Err(LocalError::MissingFiles {
                model: self.id.clone(),
                missing: missing.join(", "),
            });
        }
        Ok(names.iter().filter_map(|n| self.find(n)).collect())
    }

    /// The name of the weight file the model has (see [`WEIGHTS`]).
    pub fn weight_file(&self) -> Option<String> {
        self.find(WEIGHTS).map(|path| file_name(&path))
    }

    /// The model's weights as f32 tensors: `model.safetensors` read tensor by
    /// tensor (see [`crate::safetensors`]), else PyTorch's
    /// `pytorch_model.bin` (its pickle is read, never run).
    pub fn weights(&self, device: &Device) -> Result<Weights, LocalError> {
        self.weights_from(WEIGHTS, device)
    }

    /// The weights of the first present of `names` (`a|b|...`, paths inside
    /// the repository such as `unet/diffusion_pytorch_model.safetensors`), as
    /// f32 tensors; safetensors of any float type or a PyTorch state dict.
    pub fn weights_from(&self, names: &str, device: &Device) -> Result<Weights, LocalError> {
        let path = self.require(&[names])?.remove(0);
        let file = file_name(&path);
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let vb = if file.ends_with(".safetensors") {
            crate::safetensors::ReadSafetensors::open(&path).map(|weights| {
                VarBuilder::from_backend(Box::new(weights), DType::F32, device.clone())
            })
        } else {
            VarBuilder::from_pth(&path, DType::F32, device)
        }
        .map_err(|e| self.load_error(format!("{file}: {e}")))?;
        Ok(Weights { vb, bytes, file })
    }

    /// A cached JSON file, parsed.
    pub fn json<T: DeserializeOwned>(&self, name: &str) -> Result<T, LocalError> {
        let path = self.require(&[name])?.remove(0);
        let text =
            std::fs::read_to_string(&path).map_err(|e| self.load_error(format!("{name}: {e}")))?;
        serde_json::from_str(&text).map_err(|e| self.load_error(format!("{name}: {e}")))
    }

    /// A cached JSON file, parsed, when present.
    pub fn json_if_present<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, LocalError> {
        match self.get(name) {
            Some(_) => self.json(name).map(Some),
            None => Ok(None),
        }
    }

    /// A load error for this model.
    pub fn load_error(&self, message: impl Into<String>) -> LocalError {
        LocalError::Load {
            model: self.id.clone(),
            message: message.into(),
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_cache_beats_hf_home() {
        assert_eq!(
            hub_dir(Some("/a".into()), Some("/b".into())),
            Some(PathBuf::from("/a"))
        );
        assert_eq!(
            hub_dir(None, Some("/b".into())),
            Some(PathBuf::from("/b/hub"))
        );
        assert_eq!(hub_dir(Some("".into()), None), None);
    }

    #[test]
    fn missing_files_are_all_named() {
        let dir = tempfile::tempdir().unwrap();
        let snapshot = dir.path().join("models--org--m/snapshots/abc");
        std::fs::create_dir_all(&snapshot).unwrap();
        std::fs::create_dir_all(dir.path().join("models--org--m/refs")).unwrap();
        std::fs::write(dir.path().join("models--org--m/refs/main"), "abc").unwrap();
        std::fs::write(snapshot.join("config.json"), "{}").unwrap();
        let files = ModelCache::at(dir.path()).model("org/m");
        assert!(files.get("config.json").is_some());
        let err = files
            .require(&["config.json", "model.safetensors", "tokenizer.json"])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "org/m is not fully in the local cache (missing: model.safetensors, tokenizer.json); fetch it with `hgpt models pull org/m`"
        );
    }
}
