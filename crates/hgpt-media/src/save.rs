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
/// ever replacing an existing file; the content is written to a hidden
/// temporary file first and renamed over the reserved name.
pub(crate) fn save(out_dir: &Path, kind: ResourceKind, blob: &Blob) -> Result<PathBuf, MediaError> {
    let ext = save_extension(kind, blob);
    for _ in 0..ATTEMPTS {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let name = format!("{kind}-{millis}-{}.{ext}", unique_tag());
        let path = out_dir.join(&name);
        // Reserve the name: creation fails if anything already has it.
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_error(&path, &e)),
        }
        let temp = out_dir.join(format!(".{name}.part"));
        let written = write_new(&temp, &blob.bytes).and_then(|()| fs::rename(&temp, &path));
        if let Err(e) = written {
            let _ = fs::remove_file(&temp);
            let _ = fs::remove_file(&path);
            return Err(io_error(&path, &e));
        }
        return Ok(path);
    }
    Err(MediaError::Io {
        reference: out_dir.display().to_string(),
        message: format!("no free file name after {ATTEMPTS} attempts"),
    })
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
    fn tags_differ() {
        let tags: std::collections::HashSet<_> = (0..1000).map(|_| unique_tag()).collect();
        assert_eq!(tags.len(), 1000);
        assert!(
            tags.iter()
                .all(|t| t.chars().all(|c| c.is_ascii_hexdigit()))
        );
    }
}
