//! Confinement of local paths named in plans to the media root and the
//! output directory.

use hgpt_core::backend::MediaError;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

/// The two canonical directories a plan may read from.
#[derive(Debug, Clone)]
pub(crate) struct Roots {
    /// Canonical media root (the "public" folder).
    pub media_root: PathBuf,
    /// Canonical output directory (generated files).
    pub out_dir: PathBuf,
}

fn refused(reference: &str, reason: impl Into<String>) -> MediaError {
    MediaError::Refused {
        reference: reference.to_string(),
        reason: reason.into(),
    }
}

fn io_error(reference: &str, err: &io::Error) -> MediaError {
    MediaError::Io {
        reference: reference.to_string(),
        message: err.to_string(),
    }
}

/// Whether canonicalisation failed only because the path does not exist.
fn is_missing(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

impl Roots {
    /// Create the output directory if missing and canonicalise both roots.
    pub fn new(media_root: &Path, out_dir: &Path) -> Result<Self, MediaError> {
        let canon = |path: &Path| {
            fs::canonicalize(path).map_err(|e| MediaError::Io {
                reference: path.display().to_string(),
                message: format!("cannot resolve directory: {e}"),
            })
        };
        fs::create_dir_all(out_dir).map_err(|e| MediaError::Io {
            reference: out_dir.display().to_string(),
            message: format!("cannot create output directory: {e}"),
        })?;
        let roots = Self {
            media_root: canon(media_root)?,
            out_dir: canon(out_dir)?,
        };
        for root in [&roots.media_root, &roots.out_dir] {
            if !root.is_dir() {
                return Err(MediaError::Io {
                    reference: root.display().to_string(),
                    message: "not a directory".into(),
                });
            }
            if root.to_str().is_none() {
                return Err(MediaError::Io {
                    reference: root.display().to_string(),
                    message: "directory path is not valid UTF-8".into(),
                });
            }
        }
        Ok(roots)
    }

    /// Whether a canonical path lies inside one of the roots.
    pub fn contains(&self, canonical: &Path) -> bool {
        canonical.starts_with(&self.media_root) || canonical.starts_with(&self.out_dir)
    }

    fn bases(&self) -> Vec<&Path> {
        let mut bases = vec![self.media_root.as_path()];
        if self.out_dir != self.media_root {
            bases.push(self.out_dir.as_path());
        }
        bases
    }

    /// Resolve a plan's path to the canonical path of an existing regular file
    /// inside the roots, no larger than `max_bytes`.
    ///
    /// `/a.jpg` and `a.jpg` both name `<media_root>/a.jpg` (then
    /// `<out_dir>/a.jpg`); an absolute path already inside a root is used as
    /// is. A missing file is replaced by the only file in the same directory
    /// with the same stem and another extension, if there is exactly one.
    pub fn resolve(&self, reference: &str, max_bytes: u64) -> Result<PathBuf, MediaError> {
        let raw = Path::new(reference);
        let mut candidates = Vec::new();
        if raw.is_absolute() {
            if let Ok(canonical) = fs::canonicalize(raw)
                && self.contains(&canonical)
            {
                return self.check_file(reference, canonical, max_bytes);
            }
            if let Some((root, rest)) = [&self.media_root, &self.out_dir]
                .into_iter()
                .find_map(|root| raw.strip_prefix(root).ok().map(|rest| (root, rest)))
            {
                check_lexical(reference, rest)?;
                candidates.push(root.join(rest));
            }
        }
        if candidates.is_empty() {
            let relative: PathBuf = raw
                .components()
                .filter(|c| !matches!(c, Component::RootDir | Component::Prefix(_)))
                .collect();
            if relative.as_os_str().is_empty() {
                return Err(refused(reference, "names a directory, not a file"));
            }
            check_lexical(reference, &relative)?;
            candidates.extend(self.bases().into_iter().map(|base| base.join(&relative)));
        }
        for candidate in &candidates {
            match fs::canonicalize(candidate) {
                Ok(canonical) => return self.confined_file(reference, canonical, max_bytes),
                Err(e) if is_missing(&e) => continue,
                Err(e) => return Err(io_error(reference, &e)),
            }
        }
        for candidate in &candidates {
            if let Some(found) = self.same_stem(reference, candidate)? {
                tracing::debug!(reference, found = %found.display(), "using file with another extension");
                return self.confined_file(reference, found, max_bytes);
            }
        }
        let looked = candidates
            .first()
            .map(|c| c.display().to_string())
            .unwrap_or_default();
        Err(MediaError::NotFound(if looked == reference {
            looked
        } else {
            format!("{reference} (looked for {looked})")
        }))
    }

    fn confined_file(
        &self,
        reference: &str,
        path: PathBuf,
        max_bytes: u64,
    ) -> Result<PathBuf, MediaError> {
        let canonical = fs::canonicalize(&path).map_err(|e| io_error(reference, &e))?;
        if !self.contains(&canonical) {
            return Err(refused(
                reference,
                "resolves outside the media and output folders",
            ));
        }
        self.check_file(reference, canonical, max_bytes)
    }

    fn check_file(
        &self,
        reference: &str,
        canonical: PathBuf,
        max_bytes: u64,
    ) -> Result<PathBuf, MediaError> {
        let meta = fs::metadata(&canonical).map_err(|e| io_error(reference, &e))?;
        if meta.is_dir() {
            return Err(refused(reference, "is a directory"));
        }
        if !meta.is_file() {
            return Err(refused(reference, "is not a regular file"));
        }
        if meta.len() > max_bytes {
            return Err(refused(
                reference,
                format!(
                    "file has {} bytes, more than the {max_bytes}-byte limit",
                    meta.len()
                ),
            ));
        }
        Ok(canonical)
    }

    /// The only file next to `candidate` with the same stem and another
    /// extension (`e.jpeg` for `e.jpg`), if exactly one exists.
    fn same_stem(&self, reference: &str, candidate: &Path) -> Result<Option<PathBuf>, MediaError> {
        let (Some(parent), Some(name), Some(stem)) = (
            candidate.parent(),
            candidate.file_name(),
            candidate.file_stem(),
        ) else {
            return Ok(None);
        };
        let parent = match fs::canonicalize(parent) {
            Ok(parent) => parent,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => return Err(io_error(reference, &e)),
        };
        if !self.contains(&parent) {
            return Err(refused(
                reference,
                "resolves outside the media and output folders",
            ));
        }
        let Ok(entries) = fs::read_dir(&parent) else {
            return Ok(None);
        };
        let mut matches = entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|p| {
                p.file_name() != Some(name)
                    && p.file_stem() == Some(stem)
                    && p.extension().is_some()
                    && p.is_file()
            });
        match (matches.next(), matches.next()) {
            (Some(only), None) => Ok(Some(only)),
            _ => Ok(None),
        }
    }
}

/// Refuse relative paths whose `..` components climb above their base.
fn check_lexical(reference: &str, relative: &Path) -> Result<(), MediaError> {
    let mut depth = 0usize;
    for component in relative.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| refused(reference, "`..` leaves the media folder"))?;
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(refused(reference, "unexpected root in a relative path"));
            }
        }
    }
    Ok(())
}

/// Read at most `max_bytes` of a file (refusing it if it grew past the limit).
pub(crate) fn read_limited(
    reference: &str,
    path: &Path,
    max_bytes: u64,
) -> Result<Vec<u8>, MediaError> {
    let file = fs::File::open(path).map_err(|e| io_error(reference, &e))?;
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(reference, &e))?;
    if bytes.len() as u64 > max_bytes {
        return Err(refused(
            reference,
            format!("file is larger than the {max_bytes}-byte limit"),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_check_counts_depth() {
        assert!(check_lexical("x", Path::new("a/../b.jpg")).is_ok());
        assert!(check_lexical("x", Path::new("./a/./b.jpg")).is_ok());
        assert!(matches!(
            check_lexical("x", Path::new("a/../../b.jpg")),
            Err(MediaError::Refused { .. })
        ));
        assert!(matches!(
            check_lexical("x", Path::new("../b.jpg")),
            Err(MediaError::Refused { .. })
        ));
    }

    #[test]
    fn roots_contain_only_their_subtrees() {
        let roots = Roots {
            media_root: PathBuf::from("/srv/media"),
            out_dir: PathBuf::from("/srv/out"),
        };
        assert!(roots.contains(Path::new("/srv/media/a.jpg")));
        assert!(roots.contains(Path::new("/srv/out/x/y.png")));
        assert!(!roots.contains(Path::new("/srv/media2/a.jpg")));
        assert!(!roots.contains(Path::new("/srv/a.jpg")));
    }
}
