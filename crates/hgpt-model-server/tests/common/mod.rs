//! Helpers of the model server's tests: the testkit's hub cache (the real
//! MiniLM snapshot and the tiny fixture checkpoints), and a server on loopback.

#![allow(dead_code)]

use hgpt_local::{LocalBackend, LocalConfig, ModelCache};
use hgpt_model_server::ModelServerConfig;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

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
