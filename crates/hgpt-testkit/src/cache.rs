//! A Hugging Face hub cache in a temporary folder, built from the real MiniLM
//! snapshot and hgpt-local's tiny fixture checkpoints (linked, not copied).

use crate::models::minilm_snapshot;
use std::path::{Path, PathBuf};

/// The real sentence-transformers model.
pub const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// hgpt-local's parity fixtures (tiny checkpoints with `expected.json`).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../hgpt-local/tests/fixtures")
}

/// The id a fixture checkpoint folder is cached under.
pub fn fixture_id(folder: &str) -> String {
    format!("hgpt-fixtures/{folder}")
}

/// Every fixture folder that holds a checkpoint (a `config.json`, or a
/// diffusers pipeline's `model_index.json`).
pub fn fixture_folders() -> Vec<String> {
    let mut folders: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.path().join("config.json").is_file() || e.path().join("model_index.json").is_file()
        })
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    folders.sort();
    folders
}

/// A Hugging Face hub cache in a temporary folder.
pub struct Hub {
    /// The cache folder (`HF_HUB_CACHE`).
    pub dir: tempfile::TempDir,
}

impl Hub {
    /// An empty cache.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn snapshot(&self, id: &str) -> PathBuf {
        let repo = self
            .dir
            .path()
            .join(format!("models--{}", id.replace('/', "--")));
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "c0ffee").unwrap();
        let snapshot = repo.join("snapshots/c0ffee");
        std::fs::create_dir_all(&snapshot).unwrap();
        snapshot
    }

    /// Cache the files of `folder` (links) as model `id`.
    pub fn add_dir(&self, id: &str, folder: &Path) -> &Self {
        link_dir(folder, &self.snapshot(id));
        self
    }

    /// Cache the given files as model `id`.
    pub fn add_files(&self, id: &str, files: &[(&str, Vec<u8>)]) -> &Self {
        let snapshot = self.snapshot(id);
        for (name, content) in files {
            let path = snapshot.join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        self
    }

    /// Cache the real all-MiniLM-L6-v2.
    pub fn with_minilm(&self) -> &Self {
        self.add_dir(MINILM, &minilm_snapshot())
    }

    /// Cache every fixture checkpoint as `hgpt-fixtures/NAME`.
    pub fn with_fixtures(&self) -> &Self {
        for folder in fixture_folders() {
            self.add_dir(&fixture_id(&folder), &fixtures_dir().join(&folder));
        }
        self
    }

    /// The cache folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn link_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            link_dir(&entry.path(), &target);
        } else {
            std::os::unix::fs::symlink(std::fs::canonicalize(entry.path()).unwrap(), target)
                .unwrap();
        }
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}
