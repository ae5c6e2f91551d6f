//! Storing generated files: unique names, extensions from content, no overwrites.

use bytes::Bytes;
use hgpt_core::backend::{MediaError, MediaStore};
use hgpt_core::output::Blob;
use hgpt_core::task::ResourceKind;
use hgpt_media::{LocalMedia, MediaConfig};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
const JPEG: &[u8] = b"\xff\xd8\xff\xe0\0\x10JFIF\0";

fn media(dir: &Path) -> LocalMedia {
    LocalMedia::new(MediaConfig {
        media_root: dir.to_path_buf(),
        out_dir: dir.join("generated"),
        ..MediaConfig::default()
    })
    .unwrap()
}

fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn concurrent_saves_get_unique_names() {
    let dir = tempfile::tempdir().unwrap();
    let media = Arc::new(media(dir.path()));
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let media = media.clone();
            tokio::spawn(async move {
                let blob = Blob {
                    bytes: Bytes::from(format!("{i}")),
                    mime: None,
                };
                (i, media.save(ResourceKind::Text, &blob).await.unwrap())
            })
        })
        .collect();
    let mut paths = HashSet::new();
    for task in tasks {
        let (i, path) = task.await.unwrap();
        assert!(Path::new(&path).is_absolute());
        assert!(Path::new(&path).starts_with(media.out_dir()), "{path}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), i.to_string());
        assert!(paths.insert(path));
    }
    assert_eq!(paths.len(), 64);
    // No temporary files are left behind.
    assert_eq!(std::fs::read_dir(media.out_dir()).unwrap().count(), 64);
}

#[tokio::test]
async fn names_follow_the_pattern_and_extensions_come_from_content() {
    let dir = tempfile::tempdir().unwrap();
    let media = media(dir.path());
    let cases = [
        (
            ResourceKind::Image,
            Blob::sniffed(Bytes::from_static(PNG)),
            "png",
        ),
        (
            ResourceKind::Image,
            Blob::sniffed(Bytes::from_static(JPEG)),
            "jpg",
        ),
        // Declared type when the content cannot be sniffed.
        (
            ResourceKind::Image,
            Blob {
                bytes: Bytes::from_static(b"??"),
                mime: Some("image/webp".into()),
            },
            "webp",
        ),
        // Content wins over a wrong declaration.
        (
            ResourceKind::Image,
            Blob {
                bytes: Bytes::from_static(PNG),
                mime: Some("image/jpeg".into()),
            },
            "png",
        ),
        (
            ResourceKind::Image,
            Blob {
                bytes: Bytes::from_static(b"??"),
                mime: None,
            },
            "png",
        ),
        (
            ResourceKind::Audio,
            Blob::sniffed(Bytes::from_static(b"fLaC\0\0\0\"")),
            "flac",
        ),
        (
            ResourceKind::Audio,
            Blob {
                bytes: Bytes::from_static(b"??"),
                mime: None,
            },
            "wav",
        ),
        (
            ResourceKind::Video,
            Blob {
                bytes: Bytes::from_static(b"??"),
                mime: None,
            },
            "mp4",
        ),
        (
            ResourceKind::Text,
            Blob {
                bytes: Bytes::from_static(b"BMW"),
                mime: None,
            },
            "txt",
        ),
    ];
    for (kind, blob, ext) in cases {
        let path = media.save(kind, &blob).await.unwrap();
        let name = file_name(&path);
        let parts: Vec<&str> = name.splitn(3, '-').collect();
        assert_eq!(parts[0], kind.to_string(), "{name}");
        assert!(
            parts[1].chars().all(|c| c.is_ascii_digit()) && !parts[1].is_empty(),
            "{name}"
        );
        let (tag, found_ext) = parts[2].rsplit_once('.').unwrap();
        assert!(
            tag.chars().all(|c| c.is_ascii_hexdigit()) && !tag.is_empty(),
            "{name}"
        );
        assert_eq!(found_ext, ext, "{name}");
        assert_eq!(std::fs::read(&path).unwrap(), blob.bytes);
    }
}

#[tokio::test]
async fn saved_files_load_back_by_their_reported_path() {
    let dir = tempfile::tempdir().unwrap();
    let media = media(dir.path());
    let path = media
        .save(ResourceKind::Image, &Blob::sniffed(Bytes::from_static(PNG)))
        .await
        .unwrap();
    let blob = media.load(&path, ResourceKind::Image).await.unwrap();
    assert_eq!(&blob.bytes[..], PNG);
    assert_eq!(blob.mime.as_deref(), Some("image/png"));
}

#[tokio::test]
async fn a_missing_output_directory_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let media = media(dir.path());
    std::fs::remove_dir(media.out_dir()).unwrap();
    let result = media
        .save(
            ResourceKind::Text,
            &Blob {
                bytes: Bytes::from_static(b"x"),
                mime: None,
            },
        )
        .await;
    assert!(matches!(result, Err(MediaError::Io { .. })), "{result:?}");
}
