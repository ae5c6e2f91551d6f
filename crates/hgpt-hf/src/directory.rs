//! Provider mappings, cached: in memory for every caller of one process, on
//! disk across processes, each for a time limit. Concurrent lookups of one
//! model share one Hub call.

use crate::hub::{HubApi, HubError};
use crate::mapping::ModelProviders;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::OnceCell;

/// How long a failed lookup is remembered, so that the candidates of one run
/// share the failure instead of each asking again.
const FAILURE_TTL: Duration = Duration::from_secs(30);
/// How long "the Hub does not know this model" is trusted at most (a model
/// may be created or made public meanwhile).
const UNKNOWN_TTL: Duration = Duration::from_secs(600);

/// What the Hub said about a model, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Lookup {
    /// `Ok(None)`: the Hub does not know the model.
    pub result: Result<Option<ModelProviders>, HubError>,
    /// When it was fetched.
    pub fetched_at: SystemTime,
}

impl Lookup {
    /// Whether it is younger than its time limit; a time in the future (a
    /// clock change, a doctored file) is not fresh.
    fn fresh(&self, ttl: Duration) -> bool {
        let ttl = match &self.result {
            Ok(Some(_)) => ttl,
            Ok(None) => ttl.min(UNKNOWN_TTL),
            Err(_) => FAILURE_TTL,
        };
        self.fetched_at.elapsed().is_ok_and(|age| age < ttl)
    }
}

#[derive(Serialize, Deserialize)]
struct DiskEntry {
    model: String,
    fetched_at_unix: u64,
    /// `null`: the Hub does not know the model.
    providers: Option<ModelProviders>,
}

type Slot = Arc<OnceCell<Lookup>>;

/// Provider mappings from the Hub API behind a two-level cache.
#[derive(Debug)]
pub struct ProviderDirectory {
    hub: HubApi,
    ttl: Duration,
    disk: Option<PathBuf>,
    memory: Mutex<HashMap<String, Slot>>,
}

impl ProviderDirectory {
    /// Lookups through `hub`, kept for `ttl`, on disk under `disk` when given.
    pub fn new(hub: HubApi, ttl: Duration, disk: Option<PathBuf>) -> Self {
        Self {
            hub,
            ttl,
            disk,
            memory: Mutex::new(HashMap::new()),
        }
    }

    /// The Hub client.
    pub fn hub(&self) -> &HubApi {
        &self.hub
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.memory
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The mapping of `model` if this process already has a fresh one (no
    /// I/O; for labels).
    pub fn cached(&self, model: &str) -> Option<ModelProviders> {
        let slot = self.memory().get(model).cloned()?;
        let lookup = slot.get()?;
        if !lookup.fresh(self.ttl) {
            return None;
        }
        lookup.result.clone().ok().flatten()
    }

    /// The mapping of `model`: from memory, else from disk, else from the Hub.
    pub async fn lookup(&self, model: &str) -> Lookup {
        let slot = {
            let mut memory = self.memory();
            let stale = memory
                .get(model)
                .and_then(|slot| slot.get())
                .is_some_and(|lookup| !lookup.fresh(self.ttl));
            if stale {
                memory.remove(model);
            }
            memory.entry(model.to_string()).or_default().clone()
        };
        slot.get_or_init(|| self.load(model)).await.clone()
    }

    async fn load(&self, model: &str) -> Lookup {
        if let Some(lookup) = self.read_disk(model).await
            && lookup.fresh(self.ttl)
        {
            return lookup;
        }
        let result = self.hub.model_providers(model).await;
        let lookup = Lookup {
            result,
            fetched_at: SystemTime::now(),
        };
        if let Ok(providers) = &lookup.result {
            self.write_disk(model, providers, lookup.fetched_at).await;
        }
        lookup
    }

    fn disk_path(&self, model: &str) -> Option<PathBuf> {
        let dir = self.disk.as_ref()?;
        // Model ids are checked before any lookup reaches the Hub; a name
        // that is not one never gets a file.
        if !crate::hub::valid_hub_id(model) {
            return None;
        }
        Some(dir.join(format!("{}.json", model.replace('/', "--"))))
    }

    async fn read_disk(&self, model: &str) -> Option<Lookup> {
        let path = self.disk_path(model)?;
        let text = tokio::fs::read(&path).await.ok()?;
        let entry: DiskEntry = match serde_json::from_slice(&text) {
            Ok(entry) => entry,
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "ignoring an unreadable provider mapping cache file");
                return None;
            }
        };
        if entry.model != model {
            return None;
        }
        Some(Lookup {
            result: Ok(entry.providers),
            fetched_at: UNIX_EPOCH.checked_add(Duration::from_secs(entry.fetched_at_unix))?,
        })
    }

    async fn write_disk(&self, model: &str, providers: &Option<ModelProviders>, at: SystemTime) {
        let Some(path) = self.disk_path(model) else {
            return;
        };
        let entry = DiskEntry {
            model: model.to_string(),
            fetched_at_unix: at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            providers: providers.clone(),
        };
        let Ok(text) = serde_json::to_vec_pretty(&entry) else {
            return;
        };
        let write = async {
            if let Some(dir) = path.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            // Write then rename, so a concurrent reader never sees half a file.
            static WRITES: AtomicUsize = AtomicUsize::new(0);
            let partial = path.with_extension(format!(
                "json.{}-{}.partial",
                std::process::id(),
                WRITES.fetch_add(1, Ordering::Relaxed)
            ));
            tokio::fs::write(&partial, text).await?;
            tokio::fs::rename(&partial, &path).await
        };
        if let Err(err) = write.await {
            tracing::warn!(path = %path.display(), %err, "cannot cache a provider mapping on disk");
        }
    }
}
