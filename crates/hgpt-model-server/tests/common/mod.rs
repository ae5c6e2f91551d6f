//! Helpers of the model server's tests: a hub cache built from the real
//! MiniLM snapshot and the tiny fixture checkpoints, and a server on loopback.

#![allow(dead_code)]

use hgpt_local::{LocalBackend, LocalConfig, ModelCache};
use hgpt_model_server::ModelServerConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The real sentence-transformers model.
pub const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// The snapshot that `scripts/fetch-minilm.sh` lays out.
pub use hgpt_testkit::models::minilm_snapshot;

/// hgpt-local's parity fixtures (tiny checkpoints with `expected.json`).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../hgpt-local/tests/fixtures")
}

/// The id a fixture checkpoint folder is cached under.
pub fn fixture_id(folder: &str) -> String {
    format!("hgpt-fixtures/{folder}")
}

/// Every fixture folder that holds a checkpoint.
pub fn fixture_folders() -> Vec<String> {
    let mut folders: Vec<String> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().join("config.json").is_file())
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    folders.sort();
    folders
}

/// A Hugging Face hub cache in a temporary folder.
pub struct Hub {
    pub dir: tempfile::TempDir,
}

impl Hub {
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

    pub fn with_minilm(&self) -> &Self {
        self.add_dir(MINILM, &minilm_snapshot())
    }

    pub fn with_fixtures(&self) -> &Self {
        for folder in fixture_folders() {
            self.add_dir(&fixture_id(&folder), &fixtures_dir().join(&folder));
        }
        self
    }

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

/// A safetensors file holding one f32 tensor called `name`.
pub fn safetensors_with(name: &str) -> Vec<u8> {
    let header = format!(r#"{{"{name}":{{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}}}"#);
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&[0u8; 8]);
    out
}

/// A model server running on loopback.
pub struct Server {
    pub url: String,
    pub addr: SocketAddr,
    pub backend: Arc<LocalBackend>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub async fn start(cache: &Path, config: ModelServerConfig) -> Self {
        let backend = Arc::new(LocalBackend::new(LocalConfig {
            cache: ModelCache::at(cache),
            memory_budget_bytes: 0,
            ..LocalConfig::default()
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(hgpt_model_server::serve(
            listener,
            backend.clone(),
            config,
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            url: format!("http://{addr}"),
            addr,
            backend,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// Stop the server; what `serve` returned.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.handle.take().unwrap().await.unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}
