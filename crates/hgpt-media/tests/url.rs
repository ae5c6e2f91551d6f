//! Downloading http URLs from a loopback server started by each test.

use hgpt_core::backend::{MediaError, MediaStore};
use hgpt_core::task::ResourceKind;
use hgpt_media::{LocalMedia, MediaConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

/// A tiny HTTP/1.1 server on 127.0.0.1 that counts the requests it sees.
struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Server {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(handle(stream, counter));
            }
        });
        Self { addr, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn handle(mut stream: TcpStream, hits: Arc<AtomicUsize>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let head = String::from_utf8_lossy(&request);
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let ok = |content_type: &str, body: &[u8]| {
        let mut response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(body);
        response
    };
    let response = match path.as_str() {
        "/img.png" => ok("image/png", PNG),
        "/note.txt" => ok("text/plain", b"hello"),
        "/speech" => ok("audio/x-custom", b"\0\0\0\x01opaque"),
        "/redirect" => b"HTTP/1.1 302 Found\r\nLocation: /img.png\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        "/huge-declared" => {
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\nConnection: close\r\n\r\n0123".to_vec()
        }
        "/stream" => {
            // No Content-Length: the body runs until the connection closes.
            let head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n";
            if stream.write_all(head).await.is_err() || stream.write_all(PNG).await.is_err() {
                return;
            }
            let chunk = vec![0u8; 64 * 1024];
            for _ in 0..160 {
                if stream.write_all(&chunk).await.is_err() {
                    return;
                }
            }
            let _ = stream.shutdown().await;
            return;
        }
        _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
    };
    let _ = stream.write_all(&response).await;
    let _ = stream.shutdown().await;
}

fn media(allow_private_urls: bool, max_download_bytes: u64) -> (TempDir, LocalMedia) {
    let dir = tempfile::tempdir().unwrap();
    let media = LocalMedia::new(MediaConfig {
        media_root: dir.path().to_path_buf(),
        out_dir: dir.path().join("out"),
        allow_private_urls,
        max_download_bytes,
        ..MediaConfig::default()
    })
    .unwrap();
    (dir, media)
}

#[tokio::test]
async fn loopback_is_refused_without_contacting_the_server() {
    let server = Server::start().await;
    let (_dir, media) = media(false, 1 << 20);
    for url in [
        server.url("/img.png"),
        format!("http://localhost:{}/img.png", server.addr.port()),
    ] {
        match media.load(&url, ResourceKind::Image).await {
            Err(MediaError::Refused { reason, .. }) => {
                assert!(reason.contains("loopback"), "{reason}")
            }
            other => panic!("expected Refused for {url}, got {other:?}"),
        }
    }
    let port = server.addr.port();
    for other in [
        format!("http://[::ffff:127.0.0.1]:{port}/img.png"),
        format!("http://2130706433:{port}/img.png"),
        format!("http://0x7f.1:{port}/img.png"),
        format!("http://LOCALHOST.:{port}/img.png"),
    ] {
        let result = media.load(&other, ResourceKind::Image).await;
        assert!(
            matches!(result, Err(MediaError::Refused { .. })),
            "{other}: {result:?}"
        );
    }
    assert_eq!(server.hits(), 0);
}

#[tokio::test]
async fn loopback_is_allowed_when_configured() {
    let server = Server::start().await;
    let (_dir, media) = media(true, 1 << 20);
    let blob = media
        .load(&server.url("/img.png"), ResourceKind::Image)
        .await
        .unwrap();
    assert_eq!(&blob.bytes[..], PNG);
    assert_eq!(blob.mime.as_deref(), Some("image/png"));
    // By name: the host is resolved here and the connection pinned to it.
    let by_name = format!("http://localhost:{}/note.txt", server.addr.port());
    let text = media.load(&by_name, ResourceKind::Text).await.unwrap();
    assert_eq!(&text.bytes[..], b"hello");
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn redirects_are_followed() {
    let server = Server::start().await;
    let (_dir, media) = media(true, 1 << 20);
    let blob = media
        .load(&server.url("/redirect"), ResourceKind::Image)
        .await
        .unwrap();
    assert_eq!(&blob.bytes[..], PNG);
    assert_eq!(server.hits(), 2);
}

#[tokio::test]
async fn streamed_bodies_past_the_cap_are_refused() {
    let server = Server::start().await;
    let (_dir, media) = media(true, 256 * 1024);
    match media
        .load(&server.url("/stream"), ResourceKind::Image)
        .await
    {
        Err(MediaError::Refused { reason, .. }) => assert!(reason.contains("limit"), "{reason}"),
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn declared_lengths_past_the_cap_are_refused() {
    let server = Server::start().await;
    let (_dir, media) = media(true, 1 << 20);
    let result = media
        .load(&server.url("/huge-declared"), ResourceKind::Image)
        .await;
    assert!(
        matches!(result, Err(MediaError::Refused { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn error_statuses_are_io_errors() {
    let server = Server::start().await;
    let (_dir, media) = media(true, 1 << 20);
    match media
        .load(&server.url("/missing"), ResourceKind::Image)
        .await
    {
        Err(MediaError::Io { message, .. }) => assert!(message.contains("404"), "{message}"),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[tokio::test]
async fn downloaded_content_must_fit_the_kind() {
    let server = Server::start().await;
    let (_dir, media) = media(true, 1 << 20);
    let result = media
        .load(&server.url("/note.txt"), ResourceKind::Image)
        .await;
    assert!(matches!(
        result,
        Err(MediaError::Invalid {
            kind: ResourceKind::Image,
            ..
        })
    ));
    // Unsniffable audio is accepted on its declared content type.
    let audio = media
        .load(&server.url("/speech"), ResourceKind::Audio)
        .await
        .unwrap();
    assert_eq!(audio.mime.as_deref(), Some("audio/x-custom"));
}

#[tokio::test]
async fn file_urls_are_refused() {
    let (_dir, media) = media(true, 1 << 20);
    let result = media.load("file:///etc/passwd", ResourceKind::Text).await;
    assert!(
        matches!(result, Err(MediaError::Refused { .. })),
        "{result:?}"
    );
}
