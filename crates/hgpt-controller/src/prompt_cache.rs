//! Prefilled prompt prefixes: the fixed part of each stage's prompt (system
//! prompt, task list, demonstrations) is computed once per loaded model and
//! its attention state reused; it is also saved on disk so that the next
//! process starts from it.
//!
//! A file is keyed by the model file (path, size, modification time), the
//! prefix's tokens and the cache format; anything that changes one of them
//! makes a new key. A file that cannot be read, or that holds other tokens
//! or other shapes, is ignored and rebuilt.

use crate::error::Result;
use crate::model::{KvCache, Model};
use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Bump when the saved layout changes.
const FORMAT: &str = "hgpt-prefix-kv-1";
/// Prefixes kept in memory per model (one per prompt kind in practice:
/// plan, selection, answer, chat).
const IN_MEMORY: usize = 4;
/// Prefixes shorter than this are not worth a file.
const MIN_SAVED_TOKENS: usize = 32;

/// Identifies the model file a cache belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelIdentity(String);

impl ModelIdentity {
    /// The identity of the file at `path`: its absolute path, size and
    /// modification time, and the context length the model runs with.
    pub fn of(path: &Path, context: usize) -> Self {
        let meta = std::fs::metadata(path).ok();
        let size = meta.as_ref().map_or(0, |m| m.len());
        let modified = meta
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Self(format!(
            "{}|{size}|{modified}|ctx={context}",
            path.display()
        ))
    }
}

/// Prefix caches in memory, and optionally on disk.
pub struct PrefixCache {
    identity: ModelIdentity,
    dir: Option<PathBuf>,
    entries: Vec<KvCache>,
    clock: u64,
    last_used: Vec<u64>,
}

impl std::fmt::Debug for PrefixCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefixCache")
            .field("dir", &self.dir)
            .field("entries", &self.entries.len())
            .finish()
    }
}

/// Where a request's prompt started from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheHit {
    /// Nothing reusable.
    None,
    /// A prefix held in memory.
    Memory,
    /// A prefix read from disk.
    Disk,
}

impl PrefixCache {
    /// A cache for the model `identity`; `dir` enables the files.
    pub fn new(identity: ModelIdentity, dir: Option<PathBuf>) -> Self {
        Self {
            identity,
            dir,
            entries: Vec::new(),
            clock: 0,
            last_used: Vec::new(),
        }
    }

    /// Bytes of attention state held in memory.
    pub fn bytes(&self) -> usize {
        self.entries.iter().map(KvCache::bytes).sum()
    }

    /// A working cache for `tokens`, holding the longest cached prefix of
    /// them (at most `tokens.len() - 1`, so that at least one token is fed).
    /// `stable` is the part of `tokens` that is the same across requests of
    /// this kind; it is looked up on disk when memory has less.
    pub fn start(
        &mut self,
        model: &Model,
        tokens: &[u32],
        stable: usize,
    ) -> Result<(KvCache, CacheHit)> {
        let usable = tokens.len().saturating_sub(1);
        let best = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, common_prefix(e.tokens(), tokens).min(usable)))
            .max_by_key(|(_, len)| *len);
        let stable = stable.min(usable);
        if let Some((index, len)) = best
            && len > 0
            && (len >= stable || self.dir.is_none())
        {
            self.touch(index);
            return Ok((self.entries[index].fork(len)?, CacheHit::Memory));
        }
        if stable >= MIN_SAVED_TOKENS
            && let Some(cache) = self.load(model, &tokens[..stable])
        {
            let working = cache.fork(stable)?;
            self.insert(cache);
            return Ok((working, CacheHit::Disk));
        }
        match best {
            Some((index, len)) if len > 0 => {
                self.touch(index);
                Ok((self.entries[index].fork(len)?, CacheHit::Memory))
            }
            _ => Ok((model.new_cache(), CacheHit::None)),
        }
    }

    /// Whether a prefix of exactly these tokens is held in memory.
    pub fn holds(&self, tokens: &[u32]) -> bool {
        self.entries.iter().any(|e| e.tokens() == tokens)
    }

    /// Keep a copy of the first `len` positions of `cache` (in memory, and on
    /// disk when enabled).
    pub fn remember(&mut self, cache: &KvCache, len: usize) -> Result<()> {
        if len == 0 || self.holds(&cache.tokens()[..len.min(cache.len())]) {
            return Ok(());
        }
        let copy = cache.fork(len)?;
        if len >= MIN_SAVED_TOKENS {
            self.save(&copy);
        }
        self.insert(copy);
        Ok(())
    }

    fn insert(&mut self, cache: KvCache) {
        // A new prefix replaces the ones it extends or that extend it.
        let tokens = cache.tokens().to_vec();
        let mut i = 0;
        while i < self.entries.len() {
            let other = self.entries[i].tokens();
            if tokens.starts_with(other) || other.starts_with(&tokens) {
                self.entries.remove(i);
                self.last_used.remove(i);
            } else {
                i += 1;
            }
        }
        if self.entries.len() >= IN_MEMORY
            && let Some(oldest) = (0..self.last_used.len()).min_by_key(|i| self.last_used[*i])
        {
            self.entries.remove(oldest);
            self.last_used.remove(oldest);
        }
        self.entries.push(cache);
        self.clock += 1;
        self.last_used.push(self.clock);
    }

    fn touch(&mut self, index: usize) {
        self.clock += 1;
        if let Some(slot) = self.last_used.get_mut(index) {
            *slot = self.clock;
        }
    }

    fn file_for(&self, tokens: &[u32]) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let mut hash = Sha256::new();
        hash.update(FORMAT.as_bytes());
        hash.update(self.identity.0.as_bytes());
        for t in tokens {
            hash.update(t.to_le_bytes());
        }
        let digest = hash.finalize();
        let name: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        Some(dir.join(format!("{name}.safetensors")))
    }

    fn load(&self, model: &Model, tokens: &[u32]) -> Option<KvCache> {
        let path = self.file_for(tokens)?;
        if !path.is_file() {
            return None;
        }
        let loaded = candle_core::safetensors::load(&path, &Device::Cpu).ok();
        let cache = loaded.and_then(|mut tensors| {
            let saved: Vec<u32> = tensors.remove("tokens")?.to_vec1::<u32>().ok()?;
            if saved != tokens {
                return None;
            }
            KvCache::from_tensors(model, saved, tensors).ok()
        });
        if cache.is_none() {
            tracing::warn!(path = %path.display(), "ignoring an unusable prompt cache file");
            let _ = std::fs::remove_file(&path);
        }
        cache
    }

    fn save(&self, cache: &KvCache) {
        let Some(path) = self.file_for(cache.tokens()) else {
            return;
        };
        if path.is_file() {
            return;
        }
        if let Err(e) = write_cache(&path, cache) {
            tracing::warn!(path = %path.display(), error = %e, "could not save the prompt cache");
        }
    }
}

fn write_cache(path: &Path, cache: &KvCache) -> Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| crate::error::ControllerError::Io {
        path: dir.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, t) in cache.tensors()? {
        tensors.insert(name, t.to_device(&Device::Cpu)?);
    }
    tensors.insert(
        "tokens".to_string(),
        Tensor::new(cache.tokens(), &Device::Cpu)?,
    );
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    candle_core::safetensors::save(&tensors, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        crate::error::ControllerError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })
}

/// Length of the common prefix of two token lists.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_prefix_counts_equal_leading_tokens() {
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4]), 2);
        assert_eq!(common_prefix(&[], &[1]), 0);
        assert_eq!(common_prefix(&[5, 6], &[5, 6, 7]), 2);
    }
}
