//! Which GGUF file to run: a path, or a Hub repository with an optional
//! quantization or file name; found in the Hugging Face cache or downloaded
//! into it (one file, never the whole repository).

use crate::error::{ControllerError, Result};
use hf_hub::api::Progress;
use hf_hub::api::sync::ApiBuilder;
use std::path::{Path, PathBuf};

/// The default controller: the Hub repository and quantization.
pub const DEFAULT_MODEL: &str = "Qwen/Qwen2.5-1.5B-Instruct-GGUF:q4_k_m";
/// The quantization picked when a repository is named without one.
pub const DEFAULT_QUANTIZATION: &str = "Q4_K_M";

/// A model as the user names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A `.gguf` file on disk.
    File(PathBuf),
    /// A Hub repository of GGUF files.
    Hub {
        /// `org/name`.
        repo: String,
        /// Which file of it.
        pick: Pick,
    },
}

/// Which file of a GGUF repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// The file of this quantization (`Q4_K_M`), matched case-insensitively.
    Quantization(String),
    /// This file.
    File(String),
}

impl ModelSpec {
    /// Read `path.gguf`, `org/name`, `org/name:q4_k_m` or `org/name:file.gguf`.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.is_empty() {
            return Err(ControllerError::NotAvailable(
                "the model name is empty".into(),
            ));
        }
        let path = Path::new(text);
        if text.to_ascii_lowercase().ends_with(".gguf")
            && (path.exists() || path.is_absolute() || text.starts_with('.') || !text.contains(':'))
            && !looks_like_repo(text)
        {
            return Ok(Self::File(path.to_path_buf()));
        }
        let (repo, pick) = match text.rsplit_once(':') {
            Some((repo, pick)) if pick.to_ascii_lowercase().ends_with(".gguf") => {
                (repo, Pick::File(pick.to_string()))
            }
            Some((repo, pick)) if !pick.is_empty() => {
                (repo, Pick::Quantization(pick.to_ascii_uppercase()))
            }
            _ => (text, Pick::Quantization(DEFAULT_QUANTIZATION.to_string())),
        };
        if !looks_like_repo(repo) {
            return Err(ControllerError::NotAvailable(format!(
                "{text:?} is neither a .gguf file nor a Hub repository id (org/name)"
            )));
        }
        Ok(Self::Hub {
            repo: repo.to_string(),
            pick,
        })
    }
}

fn looks_like_repo(text: &str) -> bool {
    let mut parts = text.split('/');
    let (Some(org), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !s.starts_with('.')
    };
    ok(org) && ok(name) && !name.to_ascii_lowercase().ends_with(".gguf")
}

impl Pick {
    /// The file of `files` this pick names (split files never match); `None`
    /// when none matches.
    pub fn choose<'f>(&self, files: &'f [String]) -> Result<Option<&'f String>> {
        let ggufs = files
            .iter()
            .filter(|f| f.to_ascii_lowercase().ends_with(".gguf"));
        match self {
            Pick::File(name) => Ok(files.iter().find(|f| *f == name)),
            Pick::Quantization(quant) => {
                let wanted = quant.to_ascii_lowercase();
                let mut hits: Vec<&String> = ggufs
                    .filter(|f| {
                        let base = f.rsplit('/').next().unwrap_or(f).to_ascii_lowercase();
                        let stem = base.trim_end_matches(".gguf");
                        stem.ends_with(&format!("-{wanted}"))
                            || stem.ends_with(&format!(".{wanted}"))
                            || stem.ends_with(&format!("_{wanted}"))
                    })
                    .collect();
                hits.sort_by_key(|f| f.len());
                Ok(hits.first().copied())
            }
        }
    }

    /// How the pick reads in messages.
    pub fn describe(&self) -> String {
        match self {
            Pick::File(name) => name.clone(),
            Pick::Quantization(q) => format!("the {q} file"),
        }
    }
}

/// Where models are downloaded from and kept.
#[derive(Debug, Clone)]
pub struct HubAccess {
    /// The Hugging Face cache (`hub` folder).
    pub cache_dir: PathBuf,
    /// The Hub's address (`HF_ENDPOINT`), if not the default.
    pub endpoint: Option<String>,
    /// A token for gated repositories.
    pub token: Option<String>,
    /// Never download.
    pub offline: bool,
}

/// The files of a repository's cached `main` snapshot.
fn cached_files(cache_dir: &Path, repo: &str) -> Option<(PathBuf, Vec<String>)> {
    let folder = cache_dir.join(format!("models--{}", repo.replace('/', "--")));
    let commit = std::fs::read_to_string(folder.join("refs").join("main")).ok()?;
    let snapshot = folder.join("snapshots").join(commit.trim());
    let files = std::fs::read_dir(&snapshot)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    Some((snapshot, files))
}

/// The local path of a model, when it is on this machine.
pub fn find_local(spec: &ModelSpec, access: &HubAccess) -> Result<Option<PathBuf>> {
    match spec {
        ModelSpec::File(path) => Ok(path.is_file().then(|| path.clone())),
        ModelSpec::Hub { repo, pick } => {
            let Some((snapshot, files)) = cached_files(&access.cache_dir, repo) else {
                return Ok(None);
            };
            Ok(pick.choose(&files)?.map(|name| snapshot.join(name)))
        }
    }
}

/// The local path of a model, downloading it first when it is a Hub model
/// that is not cached (unless offline). `progress` reports the download.
pub fn resolve<P: Progress>(spec: &ModelSpec, access: &HubAccess, progress: P) -> Result<PathBuf> {
    if let Some(path) = find_local(spec, access)? {
        return Ok(path);
    }
    match spec {
        ModelSpec::File(path) => Err(ControllerError::NotAvailable(format!(
            "the controller model {} does not exist",
            path.display()
        ))),
        ModelSpec::Hub { repo, pick } => {
            if access.offline {
                return Err(ControllerError::NotAvailable(format!(
                    "the controller model {repo} ({}) is not in the Hugging Face cache at {} and \
                     downloads are off (offline); run `hgpt models pull {repo}{}` while online, \
                     or name a local .gguf file with --llm-local",
                    pick.describe(),
                    access.cache_dir.display(),
                    pick_suffix(pick),
                )));
            }
            download(repo, pick, access, progress)
        }
    }
}

fn pick_suffix(pick: &Pick) -> String {
    match pick {
        Pick::File(name) => format!(":{name}"),
        Pick::Quantization(q) if q == DEFAULT_QUANTIZATION => String::new(),
        Pick::Quantization(q) => format!(":{}", q.to_ascii_lowercase()),
    }
}

/// Download the one file `pick` names from `repo` into the cache.
pub fn download<P: Progress>(
    repo: &str,
    pick: &Pick,
    access: &HubAccess,
    progress: P,
) -> Result<PathBuf> {
    let failed = |e: hf_hub::api::sync::ApiError| ControllerError::Download(format!("{repo}: {e}"));
    let mut builder = ApiBuilder::from_env()
        .with_cache_dir(access.cache_dir.clone())
        .with_progress(false);
    if let Some(endpoint) = &access.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    if access.token.is_some() {
        builder = builder.with_token(access.token.clone());
    }
    let api = builder.build().map_err(failed)?;
    let handle = api.model(repo.to_string());
    let info = handle.info().map_err(failed)?;
    let listing: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
    let file = pick.choose(&listing)?.cloned().ok_or_else(|| {
        let available: Vec<&str> = listing
            .iter()
            .filter(|f| f.to_ascii_lowercase().ends_with(".gguf"))
            .map(String::as_str)
            .collect();
        ControllerError::NotAvailable(format!(
            "{repo} has no {}; its GGUF files: {}",
            pick.describe(),
            if available.is_empty() {
                "none".to_string()
            } else {
                available.join(", ")
            }
        ))
    })?;
    handle
        .download_with_progress(&file, progress)
        .map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        assert_eq!(
            ModelSpec::parse("models/x.Q4_K_M.gguf").unwrap(),
            ModelSpec::File("models/x.Q4_K_M.gguf".into())
        );
        assert_eq!(
            ModelSpec::parse("/abs/model.gguf").unwrap(),
            ModelSpec::File("/abs/model.gguf".into())
        );
        assert_eq!(
            ModelSpec::parse("Qwen/Qwen2.5-1.5B-Instruct-GGUF").unwrap(),
            ModelSpec::Hub {
                repo: "Qwen/Qwen2.5-1.5B-Instruct-GGUF".into(),
                pick: Pick::Quantization("Q4_K_M".into())
            }
        );
        assert_eq!(
            ModelSpec::parse("org/m-GGUF:q8_0").unwrap(),
            ModelSpec::Hub {
                repo: "org/m-GGUF".into(),
                pick: Pick::Quantization("Q8_0".into())
            }
        );
        assert_eq!(
            ModelSpec::parse("org/m-GGUF:m-f16.gguf").unwrap(),
            ModelSpec::Hub {
                repo: "org/m-GGUF".into(),
                pick: Pick::File("m-f16.gguf".into())
            }
        );
        assert!(ModelSpec::parse("").is_err());
        assert!(ModelSpec::parse("not a repo").is_err());
    }

    #[test]
    fn picks_one_quantization_file() {
        let files: Vec<String> = [
            "README.md",
            "qwen2.5-1.5b-instruct-q4_k_m.gguf",
            "qwen2.5-1.5b-instruct-q4_k_s.gguf",
            "qwen2.5-1.5b-instruct-q8_0.gguf",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let pick = Pick::Quantization("Q4_K_M".into());
        assert_eq!(
            pick.choose(&files).unwrap().map(String::as_str),
            Some("qwen2.5-1.5b-instruct-q4_k_m.gguf")
        );
        assert_eq!(
            Pick::Quantization("Q2_K".into()).choose(&files).unwrap(),
            None
        );
        let split = vec!["m-q8_0-00001-of-00002.gguf".to_string()];
        assert_eq!(
            Pick::Quantization("Q8_0".into()).choose(&split).unwrap(),
            None
        );
    }

    #[test]
    fn offline_says_what_to_pull() {
        let dir = tempfile::tempdir().unwrap();
        let access = HubAccess {
            cache_dir: dir.path().to_path_buf(),
            endpoint: None,
            token: None,
            offline: true,
        };
        let spec = ModelSpec::parse(DEFAULT_MODEL).unwrap();
        let err = resolve(&spec, &access, ()).unwrap_err().to_string();
        assert!(
            err.contains("hgpt models pull Qwen/Qwen2.5-1.5B-Instruct-GGUF"),
            "{err}"
        );
        assert!(err.contains("offline"), "{err}");
    }
}
