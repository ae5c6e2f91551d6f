//! Resources for hgpt: loading inputs named in LLM plans (local paths confined
//! to the media and output folders, guarded http(s) downloads), storing
//! generated files under unique names, and drawing detections and masks.
//!
//! Every reference in a plan is untrusted LLM output: paths may not leave
//! the two roots, URLs may not reach private addresses (unless allowed), and
//! sizes are capped.

mod draw;
mod fetch;
mod font;
mod ip;
mod kind;
mod paths;
mod raster;
mod save;

pub use ip::blocked_reason;

use async_trait::async_trait;
use bytes::Bytes;
use hgpt_core::backend::{MediaError, MediaStore};
use hgpt_core::output::{Blob, Detection, Segment};
use hgpt_core::task::ResourceKind;
use std::path::{Path, PathBuf};
use std::time::Duration;
use url::Url;

/// Where resources live and how much may be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaConfig {
    /// The folder relative paths in plans are resolved against (default `.`).
    pub media_root: PathBuf,
    /// Where generated files are written (default `hgpt-out`; created if missing).
    pub out_dir: PathBuf,
    /// Allow downloads from loopback, private and other non-public addresses.
    pub allow_private_urls: bool,
    /// Largest accepted download, in bytes (default 50 MiB).
    pub max_download_bytes: u64,
    /// Limit on a whole download, redirects included (default 30 s).
    pub download_timeout: Duration,
    /// Largest accepted local file, in bytes (default 200 MiB).
    pub max_file_bytes: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            media_root: PathBuf::from("."),
            out_dir: PathBuf::from("hgpt-out"),
            allow_private_urls: false,
            max_download_bytes: 50 * 1024 * 1024,
            download_timeout: Duration::from_secs(30),
            max_file_bytes: 200 * 1024 * 1024,
        }
    }
}

/// A [`MediaStore`] on the local file system, downloading http(s) URLs.
#[derive(Debug, Clone)]
pub struct LocalMedia {
    roots: paths::Roots,
    max_file_bytes: u64,
    fetcher: fetch::Fetcher,
}

fn join_error(err: tokio::task::JoinError) -> MediaError {
    MediaError::Io {
        reference: "background task".into(),
        message: err.to_string(),
    }
}

/// The extension of the last segment of a path or URL path, if any.
fn extension_of(path: &str) -> Option<String> {
    Path::new(path.rsplit('/').next()?)
        .extension()?
        .to_str()
        .map(str::to_string)
}

impl LocalMedia {
    /// Create the store: creates `out_dir` if missing and canonicalises both
    /// roots (the media root must exist).
    pub fn new(config: MediaConfig) -> Result<Self, MediaError> {
        let roots = paths::Roots::new(&config.media_root, &config.out_dir)?;
        Ok(Self {
            roots,
            max_file_bytes: config.max_file_bytes,
            fetcher: fetch::Fetcher {
                allow_private: config.allow_private_urls,
                max_bytes: config.max_download_bytes,
                timeout: config.download_timeout,
                #[cfg(test)]
                trusted: Vec::new(),
            },
        })
    }

    /// The canonical media root.
    pub fn media_root(&self) -> &Path {
        &self.roots.media_root
    }

    /// The canonical output directory.
    pub fn out_dir(&self) -> &Path {
        &self.roots.out_dir
    }

    /// The canonical path of the existing file `reference` names inside the
    /// media root or the output directory, under the same rules as plan
    /// references (`/a.jpg` and `a.jpg` are `<media_root>/a.jpg`, then
    /// `<out_dir>/a.jpg`; nothing outside the two roots, symlinks included;
    /// no file over the size limit). Blocking.
    pub fn resolve_file(&self, reference: &str) -> Result<PathBuf, MediaError> {
        self.roots.resolve(reference, self.max_file_bytes)
    }

    async fn load_url(
        &self,
        reference: &str,
        url: Url,
        kind: ResourceKind,
    ) -> Result<Blob, MediaError> {
        let fetched = self.fetcher.fetch(reference, url).await?;
        let extension = extension_of(fetched.url.path());
        kind::check(
            kind,
            reference,
            fetched.bytes,
            extension.as_deref(),
            fetched.content_type.as_deref(),
        )
    }

    async fn load_path(&self, reference: &str, kind: ResourceKind) -> Result<Blob, MediaError> {
        let roots = self.roots.clone();
        let max = self.max_file_bytes;
        let owned = reference.to_string();
        let (path, bytes) = tokio::task::spawn_blocking(move || {
            let path = roots.resolve(&owned, max)?;
            let bytes = paths::read_limited(&owned, &path, max)?;
            Ok::<_, MediaError>((path, bytes))
        })
        .await
        .map_err(join_error)??;
        let extension = path.extension().and_then(|e| e.to_str());
        kind::check(kind, reference, Bytes::from(bytes), extension, None)
    }
}

/// What a plan's reference names.
enum Reference {
    /// An http(s) URL.
    Url(Url),
    /// A URL with another scheme.
    OtherScheme(String),
    /// A local path.
    Path,
}

fn classify(reference: &str) -> Reference {
    match Url::parse(reference) {
        // One-letter "schemes" are Windows drive letters.
        Ok(url) if url.scheme().len() > 1 => match url.scheme() {
            "http" | "https" => Reference::Url(url),
            scheme => Reference::OtherScheme(scheme.to_string()),
        },
        _ => Reference::Path,
    }
}

#[async_trait]
impl MediaStore for LocalMedia {
    async fn load(&self, reference: &str, kind: ResourceKind) -> Result<Blob, MediaError> {
        let reference = reference.trim();
        if reference.is_empty() {
            return Err(MediaError::NotFound("(empty reference)".into()));
        }
        match classify(reference) {
            Reference::Url(url) => self.load_url(reference, url, kind).await,
            Reference::OtherScheme(scheme) => Err(MediaError::Refused {
                reference: reference.to_string(),
                reason: format!(
                    "scheme {scheme:?} is not allowed (only http, https and local paths)"
                ),
            }),
            Reference::Path => self.load_path(reference, kind).await,
        }
    }

    async fn save(&self, kind: ResourceKind, blob: &Blob) -> Result<String, MediaError> {
        let out_dir = self.roots.out_dir.clone();
        let blob = blob.clone();
        let path = tokio::task::spawn_blocking(move || save::save(&out_dir, kind, &blob))
            .await
            .map_err(join_error)??;
        Ok(path.to_string_lossy().into_owned())
    }

    async fn draw_detections(
        &self,
        image: &Blob,
        detections: &[Detection],
    ) -> Result<Blob, MediaError> {
        let bytes = image.bytes.clone();
        let detections = detections.to_vec();
        let png = tokio::task::spawn_blocking(move || draw::detections(&bytes, &detections))
            .await
            .map_err(join_error)??;
        Ok(Blob {
            bytes: Bytes::from(png),
            mime: Some("image/png".into()),
        })
    }

    async fn draw_segments(&self, image: &Blob, segments: &[Segment]) -> Result<Blob, MediaError> {
        let bytes = image.bytes.clone();
        let segments = segments.to_vec();
        let png = tokio::task::spawn_blocking(move || draw::segments(&bytes, &segments))
            .await
            .map_err(join_error)??;
        Ok(Blob {
            bytes: Bytes::from(png),
            mime: Some("image/png".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_classified() {
        assert!(matches!(
            classify("https://example.com/a.jpg"),
            Reference::Url(_)
        ));
        assert!(matches!(
            classify("HTTP://example.com/a.jpg"),
            Reference::Url(_)
        ));
        assert!(matches!(classify("file:///etc/passwd"), Reference::OtherScheme(s) if s == "file"));
        assert!(matches!(
            classify("data:image/png;base64,AAAA"),
            Reference::OtherScheme(_)
        ));
        assert!(matches!(
            classify("ftp://host/a"),
            Reference::OtherScheme(_)
        ));
        assert!(matches!(classify("/examples/a.jpg"), Reference::Path));
        assert!(matches!(classify("a.jpg"), Reference::Path));
        assert!(matches!(classify("C:\\a.jpg"), Reference::Path));
    }

    #[test]
    fn extensions_come_from_the_last_segment() {
        assert_eq!(extension_of("/x.y/a.wav").as_deref(), Some("wav"));
        assert_eq!(extension_of("/x.y/a").as_deref(), None);
        assert_eq!(extension_of("/").as_deref(), None);
    }
}
