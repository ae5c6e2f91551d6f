//! Loading local paths: confinement to the roots, fallbacks and kind checks.

use hgpt_core::backend::{MediaError, MediaStore};
use hgpt_core::task::ResourceKind;
use hgpt_media::{LocalMedia, MediaConfig};
use std::fs;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
const JPEG: &[u8] = b"\xff\xd8\xff\xe0\0\x10JFIF\0";

struct Fixture {
    _dir: TempDir,
    base: PathBuf,
    media: LocalMedia,
}

/// `<tmp>/root` (media root), `<tmp>/out` (output) and `<tmp>/secret.txt` outside both.
fn fixture(max_file_bytes: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let base = fs::canonicalize(dir.path()).unwrap();
    fs::create_dir(base.join("root")).unwrap();
    fs::write(base.join("secret.txt"), "top secret").unwrap();
    fs::write(base.join("secret.png"), PNG).unwrap();
    let media = LocalMedia::new(MediaConfig {
        media_root: base.join("root"),
        out_dir: base.join("out"),
        max_file_bytes,
        ..MediaConfig::default()
    })
    .unwrap();
    Fixture {
        _dir: dir,
        base,
        media,
    }
}

fn write(path: &Path, bytes: &[u8]) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

fn assert_refused(result: Result<hgpt_core::output::Blob, MediaError>) {
    assert!(
        matches!(result, Err(MediaError::Refused { .. })),
        "expected Refused, got {result:?}"
    );
}

#[test]
fn new_creates_the_output_directory_and_canonicalises() {
    let f = fixture(1 << 20);
    assert!(f.base.join("out").is_dir());
    assert_eq!(f.media.out_dir(), f.base.join("out"));
    assert_eq!(f.media.media_root(), f.base.join("root"));
    let missing = LocalMedia::new(MediaConfig {
        media_root: f.base.join("nope"),
        out_dir: f.base.join("out2"),
        ..MediaConfig::default()
    });
    assert!(matches!(missing, Err(MediaError::Io { .. })));
}

#[tokio::test]
async fn leading_slash_and_relative_both_mean_the_media_root() {
    let f = fixture(1 << 20);
    write(&f.base.join("root/examples/a.png"), PNG);
    for reference in [
        "/examples/a.png",
        "examples/a.png",
        "./examples/a.png",
        " /examples/a.png ",
    ] {
        let blob = f.media.load(reference, ResourceKind::Image).await.unwrap();
        assert_eq!(&blob.bytes[..], PNG, "{reference}");
        assert_eq!(blob.mime.as_deref(), Some("image/png"));
    }
}

#[tokio::test]
async fn dot_dot_escapes_are_refused() {
    let f = fixture(1 << 20);
    write(&f.base.join("root/sub/a.png"), PNG);
    assert_refused(f.media.load("../secret.txt", ResourceKind::Text).await);
    assert_refused(f.media.load("/../secret.txt", ResourceKind::Text).await);
    assert_refused(
        f.media
            .load("sub/../../secret.png", ResourceKind::Image)
            .await,
    );
    // Escapes are refused even when the target does not exist.
    assert_refused(
        f.media
            .load("../../../nothing.png", ResourceKind::Image)
            .await,
    );
    // An absolute path inside a root that climbs out with `..`.
    let climbing = format!("{}/../secret.txt", f.base.join("root").display());
    assert_refused(f.media.load(&climbing, ResourceKind::Text).await);
    // `..` that stays inside is fine.
    assert!(
        f.media
            .load("sub/../sub/a.png", ResourceKind::Image)
            .await
            .is_ok()
    );
}

#[cfg(unix)]
#[tokio::test]
async fn symlinks_leaving_the_roots_are_refused() {
    let f = fixture(1 << 20);
    std::os::unix::fs::symlink(f.base.join("secret.txt"), f.base.join("root/link.txt")).unwrap();
    std::os::unix::fs::symlink(&f.base, f.base.join("root/up")).unwrap();
    assert_refused(f.media.load("link.txt", ResourceKind::Text).await);
    assert_refused(f.media.load("/link.txt", ResourceKind::Text).await);
    assert_refused(f.media.load("up/secret.txt", ResourceKind::Text).await);
    // Even through the extension fallback.
    assert_refused(f.media.load("link.md", ResourceKind::Text).await);
    // A symlink that stays inside the roots is followed.
    write(&f.base.join("out/gen.txt"), b"generated");
    std::os::unix::fs::symlink(f.base.join("out/gen.txt"), f.base.join("root/inside.txt")).unwrap();
    let blob = f
        .media
        .load("inside.txt", ResourceKind::Text)
        .await
        .unwrap();
    assert_eq!(&blob.bytes[..], b"generated");
}

#[tokio::test]
async fn absolute_paths_inside_the_output_directory_are_used_as_is() {
    let f = fixture(1 << 20);
    let generated = f.base.join("out/image-1-ab.png");
    write(&generated, PNG);
    let blob = f
        .media
        .load(generated.to_str().unwrap(), ResourceKind::Image)
        .await
        .unwrap();
    assert_eq!(&blob.bytes[..], PNG);
    // A bare generated file name is found in the output directory too.
    let blob = f
        .media
        .load("image-1-ab.png", ResourceKind::Image)
        .await
        .unwrap();
    assert_eq!(&blob.bytes[..], PNG);
}

#[tokio::test]
async fn absolute_paths_outside_the_roots_are_taken_as_media_paths() {
    let f = fixture(1 << 20);
    let outside = f.base.join("secret.txt");
    let result = f
        .media
        .load(outside.to_str().unwrap(), ResourceKind::Text)
        .await;
    assert!(matches!(result, Err(MediaError::NotFound(_))), "{result:?}");
    // ... and resolve under the media root when the file is there.
    let mirrored = f.base.join("root").join(outside.strip_prefix("/").unwrap());
    write(&mirrored, b"public copy");
    let blob = f
        .media
        .load(outside.to_str().unwrap(), ResourceKind::Text)
        .await
        .unwrap();
    assert_eq!(&blob.bytes[..], b"public copy");
}

#[tokio::test]
async fn a_missing_extension_variant_is_found() {
    let f = fixture(1 << 20);
    write(&f.base.join("root/e.jpeg"), JPEG);
    let blob = f.media.load("/e.jpg", ResourceKind::Image).await.unwrap();
    assert_eq!(&blob.bytes[..], JPEG);
    assert_eq!(blob.mime.as_deref(), Some("image/jpeg"));
    // Two candidates: ambiguous, so not found.
    write(&f.base.join("root/d.png"), PNG);
    write(&f.base.join("root/d.webp"), PNG);
    let result = f.media.load("d.jpg", ResourceKind::Image).await;
    assert!(matches!(result, Err(MediaError::NotFound(_))), "{result:?}");
}

#[tokio::test]
async fn missing_files_are_not_found_with_their_path() {
    let f = fixture(1 << 20);
    match f.media.load("/nope.jpg", ResourceKind::Image).await {
        Err(MediaError::NotFound(message)) => assert!(message.contains("nope.jpg"), "{message}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let result = f
        .media
        .load("missing-dir/nope.jpg", ResourceKind::Image)
        .await;
    assert!(matches!(result, Err(MediaError::NotFound(_))), "{result:?}");
    let result = f.media.load("", ResourceKind::Image).await;
    assert!(matches!(result, Err(MediaError::NotFound(_))), "{result:?}");
}

#[tokio::test]
async fn directories_and_large_files_are_refused() {
    let f = fixture(16);
    fs::create_dir(f.base.join("root/dir")).unwrap();
    assert_refused(f.media.load("dir", ResourceKind::Image).await);
    assert_refused(f.media.load("/", ResourceKind::Image).await);
    write(&f.base.join("root/big.txt"), &[b'a'; 17]);
    assert_refused(f.media.load("big.txt", ResourceKind::Text).await);
    write(&f.base.join("root/small.txt"), &[b'a'; 16]);
    assert!(f.media.load("small.txt", ResourceKind::Text).await.is_ok());
}

#[tokio::test]
async fn content_must_fit_the_kind() {
    let f = fixture(1 << 20);
    write(&f.base.join("root/note.jpg"), b"just some text");
    let result = f.media.load("note.jpg", ResourceKind::Image).await;
    assert!(
        matches!(
            result,
            Err(MediaError::Invalid {
                kind: ResourceKind::Image,
                ..
            })
        ),
        "{result:?}"
    );
    write(&f.base.join("root/bad.txt"), b"\xff\xfe\x00");
    let result = f.media.load("bad.txt", ResourceKind::Text).await;
    assert!(matches!(
        result,
        Err(MediaError::Invalid {
            kind: ResourceKind::Text,
            ..
        })
    ));
    let text = f.media.load("note.jpg", ResourceKind::Text).await.unwrap();
    assert_eq!(&text.bytes[..], b"just some text");

    write(&f.base.join("root/a.wav"), b"RIFF\x24\0\0\0WAVEfmt ");
    let audio = f.media.load("a.wav", ResourceKind::Audio).await.unwrap();
    assert_eq!(audio.mime.as_deref(), Some("audio/wav"));
    write(&f.base.join("root/raw.m4a"), b"\0\0\0\x18qqqqmp42");
    let audio = f.media.load("raw.m4a", ResourceKind::Audio).await.unwrap();
    assert_eq!(audio.mime.as_deref(), Some("audio/mp4"));
    write(&f.base.join("root/clip.mp4"), b"\0\0\0\x18ftypmp42\0\0\0\0");
    let video = f.media.load("clip.mp4", ResourceKind::Video).await.unwrap();
    assert_eq!(video.mime.as_deref(), Some("video/mp4"));
    write(&f.base.join("root/pic.wav"), PNG);
    let result = f.media.load("pic.wav", ResourceKind::Audio).await;
    assert!(matches!(
        result,
        Err(MediaError::Invalid {
            kind: ResourceKind::Audio,
            ..
        })
    ));
}

#[tokio::test]
async fn other_schemes_are_refused() {
    let f = fixture(1 << 20);
    for reference in [
        "file:///etc/passwd",
        "ftp://example.com/a.jpg",
        "data:image/png;base64,AAAA",
    ] {
        assert_refused(f.media.load(reference, ResourceKind::Image).await);
    }
}
