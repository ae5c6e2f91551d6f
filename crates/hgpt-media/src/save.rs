//! Storing generated resources under unique names in the output directory.

use crate::kind::save_extension;
use hgpt_core::backend::MediaError;
use hgpt_core::output::Blob;
use hgpt_core::task::ResourceKind;
use std::collections::hash_map::RandomState;
use std::fs::{self, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Process-wide sequence number of saved files.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// How many names are tried before giving up.
const ATTEMPTS: usize = 16;

/// A file-name tag unique in this process and very likely across processes:
/// random bits followed by the sequence number, in hex.
fn unique_tag() -> String {
    let sequence = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(sequence);
    hasher.write_u32(std::process::id());
    format!("{:08x}{sequence:x}", hasher.finish() as u32)
}

fn io_error(reference: &Path, err: &io::Error) -> MediaError {
    MediaError::Io {
        reference: reference.display().to_string(),
        message: err.to_string(),
    }
}

/// Write `blob` to `out_dir` as `{kind}-{unix_millis}-{tag}.{ext}` without
/// ever replacing an existing file or showing a partly written one: the
/// content goes to a hidden temporary file, which is then hard-linked under
/// its final name (a link never replaces anything) and unlinked. Where the
/// file system has no hard links, the final name is reserved empty and the
/// temporary file renamed over it.
pub(crate) fn save(out_dir: &Path, kind: ResourceKind, blob: &Blob) -> Result<PathBuf, MediaError> {
    let ext = save_extension(kind, blob);
    let temp = out_dir.join(format!(".{kind}-{}.part", unique_tag()));
    if let Err(e) = write_new(&temp, &blob.bytes) {
        let _ = fs::remove_file(&temp);
        return Err(io_error(&temp, &e));
    }
    let published = publish(out_dir, &temp, &|| {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("{kind}-{millis}-{}.{ext}", unique_tag())
    });
    // Linked (or renamed) or not, the temporary name goes.
    let _ = fs::remove_file(&temp);
    published
}

/// Give the written file `temp` a fresh name from `name`, never replacing
/// an existing file.
fn publish(out_dir: &Path, temp: &Path, name: &dyn Fn() -> String) -> Result<PathBuf, MediaError> {
    for _ in 0..ATTEMPTS {
        let path = out_dir.join(name());
        match fs::hard_link(temp, &path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            // No hard links here (some network and FAT file systems).
            Err(_) => return reserve_and_rename(out_dir, temp, name),
        }
    }
    Err(no_free_name(out_dir))
}

/// [`publish`] without hard links: reserve the name with an empty file,
/// then rename the written file over it.
fn reserve_and_rename(
    out_dir: &Path,
    temp: &Path,
    name: &dyn Fn() -> String,
) -> Result<PathBuf, MediaError> {
    for _ in 0..ATTEMPTS {
        let path = out_dir.join(name());
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(&path, &e)),
        }
        if let Err(e) = fs::rename(temp, &path) {
            let _ = fs::remove_file(&path);
            return Err(io_error(&path, &e));
        }
        return Ok(path);
    }
    Err(no_free_name(out_dir))
}

fn no_free_name(out_dir: &Path) -> MediaError {
    MediaError::Io {
        reference: out_dir.display().to_string(),
        message: format!("no free file name after {ATTEMPTS} attempts"),
    }
}

fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taken_names_are_skipped_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("taken.png"), b"old").unwrap();
        let temp = dir.path().join(".x.part");
        std::fs::write(&temp, b"new").unwrap();
        let names = std::cell::RefCell::new(vec!["free.png", "taken.png"]);
        let next = || names.borrow_mut().pop().unwrap_or("none").to_string();
        for publish in [publish, reserve_and_rename] {
            *names.borrow_mut() = vec!["free.png", "taken.png"];
            let _ = std::fs::remove_file(dir.path().join("free.png"));
            std::fs::write(&temp, b"new").unwrap();
            let path = publish(dir.path(), &temp, &next).unwrap();
            assert_eq!(path, dir.path().join("free.png"));
            assert_eq!(std::fs::read(&path).unwrap(), b"new");
            assert_eq!(std::fs::read(dir.path().join("taken.png")).unwrap(), b"old");
        }
        // Every name taken: an error, nothing replaced.
        let taken = || "taken.png".to_string();
        assert!(publish(dir.path(), &temp, &taken).is_err());
        assert_eq!(std::fs::read(dir.path().join("taken.png")).unwrap(), b"old");
    }

    #[test]
    fn tags_differ() {
        let tags: std::collections::HashSet<_> = (0..1000).map(|_| unique_tag()).collect();
        assert_eq!(tags.len(), 1000);
        assert!(
            tags.iter()
                .all(|t| t.chars().all(|c| c.is_ascii_hexdigit()))
        );
    }
}
