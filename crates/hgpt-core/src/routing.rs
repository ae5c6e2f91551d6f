//! Where each model runs: `local`, `remote` or `hybrid` inference.
//!
//! [`RoutedBackend`] puts local tiers (the in-process runtime, local model
//! servers) in front of a remote backend. In hybrid mode a model runs on the
//! first local tier that says it is available (cached, or loaded on a model
//! server) and remotely otherwise; local mode never goes remote; remote mode
//! never runs locally. The endpoint shown to the LLM during selection is the
//! tier the model would run on, so the selection prompt can prefer local ones.

use crate::backend::{Availability, InferenceBackend, InferenceError, InferenceRequest};
use crate::output::InferenceOutput;
use crate::task::TaskKind;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Which tiers may run models.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InferenceMode {
    /// Local tiers only.
    Local,
    /// The remote backend only.
    #[serde(alias = "huggingface")]
    Remote,
    /// Local when the model is available locally, else remote.
    #[default]
    Hybrid,
}

impl std::str::FromStr for InferenceMode {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "local" => Ok(Self::Local),
            "remote" | "huggingface" => Ok(Self::Remote),
            "hybrid" => Ok(Self::Hybrid),
            other => Err(format!(
                "unknown inference mode {other:?} (expected local, remote or hybrid)"
            )),
        }
    }
}

/// Local tiers in front of a remote backend.
pub struct RoutedBackend {
    mode: InferenceMode,
    local: Vec<Arc<dyn InferenceBackend>>,
    remote: Arc<dyn InferenceBackend>,
    routes: Mutex<HashMap<String, Tier>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tier {
    Local(usize),
    Remote,
}

impl RoutedBackend {
    /// Route between `local` tiers (in order of preference) and `remote`.
    pub fn new(
        mode: InferenceMode,
        local: Vec<Arc<dyn InferenceBackend>>,
        remote: Arc<dyn InferenceBackend>,
    ) -> Self {
        Self {
            mode,
            local,
            remote,
            routes: Mutex::new(HashMap::new()),
        }
    }

    fn tier(&self, tier: Tier) -> &dyn InferenceBackend {
        match tier {
            Tier::Local(i) => self
                .local
                .get(i)
                .map_or(self.remote.as_ref(), |b| b.as_ref()),
            Tier::Remote => self.remote.as_ref(),
        }
    }

    /// Decide where a model runs, and what that tier says about it.
    async fn route(&self, task: TaskKind, model: &str) -> (Option<Tier>, Availability) {
        let mut reasons = Vec::new();
        if self.mode != InferenceMode::Remote {
            for (i, backend) in self.local.iter().enumerate() {
                let availability = backend.availability(task, model).await;
                let takes_it = match self.mode {
                    // A local tier that cannot tell is still worth trying when
                    // there is nowhere else to go.
                    InferenceMode::Local => availability.is_usable(),
                    _ => availability == Availability::Available,
                };
                if takes_it {
                    return (Some(Tier::Local(i)), availability);
                }
                if let Availability::Unavailable(reason) = availability {
                    reasons.push(reason);
                }
            }
        }
        if self.mode == InferenceMode::Local {
            let reason = if reasons.is_empty() {
                "no local runtime is configured".to_string()
            } else {
                reasons.join("; ")
            };
            return (
                None,
                Availability::Unavailable(format!("local mode: {reason}")),
            );
        }
        (
            Some(Tier::Remote),
            self.remote.availability(task, model).await,
        )
    }

    fn remember(&self, model: &str, tier: Option<Tier>) {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        match tier {
            Some(tier) => routes.insert(model.to_string(), tier),
            None => routes.remove(model),
        };
    }

    fn remembered(&self, model: &str) -> Option<Tier> {
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(model)
            .copied()
    }
}

#[async_trait]
impl InferenceBackend for RoutedBackend {
    fn endpoint(&self, model: &str) -> String {
        match (self.remembered(model), self.mode) {
            (Some(tier), _) => self.tier(tier).endpoint(model),
            (None, InferenceMode::Local) => self
                .local
                .first()
                .map_or_else(|| "local".to_string(), |b| b.endpoint(model)),
            (None, _) => self.remote.endpoint(model),
        }
    }

    async fn availability(&self, task: TaskKind, model: &str) -> Availability {
        let (tier, availability) = self.route(task, model).await;
        self.remember(model, tier);
        availability
    }

    async fn infer(&self, request: &InferenceRequest) -> Result<InferenceOutput, InferenceError> {
        let tier = match self.remembered(&request.model) {
            Some(tier) => tier,
            None => {
                let (tier, availability) = self.route(request.task, &request.model).await;
                self.remember(&request.model, tier);
                match tier {
                    Some(tier) => tier,
                    None => {
                        let reason = match availability {
                            Availability::Unavailable(reason) => reason,
                            _ => "no tier can run it".to_string(),
                        };
                        return Err(InferenceError::Unsupported(format!(
                            "{}: {reason}",
                            request.model
                        )));
                    }
                }
            }
        };
        self.tier(tier).infer(request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::InferenceOutput;

    /// A tier that knows some models and answers with its own name.
    struct Tier(&'static str, Vec<(&'static str, Availability)>);

    #[async_trait]
    impl InferenceBackend for Tier {
        fn endpoint(&self, _model: &str) -> String {
            self.0.to_string()
        }
        async fn availability(&self, _task: TaskKind, model: &str) -> Availability {
            self.1.iter().find(|(m, _)| *m == model).map_or_else(
                || Availability::Unavailable(format!("{} lacks {model}", self.0)),
                |(_, a)| a.clone(),
            )
        }
        async fn infer(
            &self,
            _request: &InferenceRequest,
        ) -> Result<InferenceOutput, InferenceError> {
            Ok(InferenceOutput::Text(self.0.to_string()))
        }
    }

    fn router(mode: InferenceMode) -> RoutedBackend {
        let in_process = Tier("local", vec![("cached/model", Availability::Available)]);
        let server = Tier(
            "server",
            vec![
                ("loaded/model", Availability::Available),
                ("loadable/model", Availability::Unknown),
            ],
        );
        let remote = Tier("huggingface", vec![]);
        RoutedBackend::new(
            mode,
            vec![Arc::new(in_process), Arc::new(server)],
            Arc::new(remote),
        )
    }

    async fn ran_on(router: &RoutedBackend, model: &str) -> Result<String, InferenceError> {
        let request = InferenceRequest {
            task: TaskKind::ImageToText,
            model: model.into(),
            args: Default::default(),
        };
        router.availability(request.task, model).await;
        match router.infer(&request).await? {
            InferenceOutput::Text(tier) => Ok(tier),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn hybrid_prefers_available_local_tiers() {
        let r = router(InferenceMode::Hybrid);
        assert_eq!(ran_on(&r, "cached/model").await.unwrap(), "local");
        assert_eq!(r.endpoint("cached/model"), "local");
        assert_eq!(ran_on(&r, "loaded/model").await.unwrap(), "server");
        assert_eq!(
            ran_on(&r, "loadable/model").await.unwrap(),
            "huggingface",
            "not loaded: remote"
        );
        assert_eq!(ran_on(&r, "other/model").await.unwrap(), "huggingface");
        assert_eq!(r.endpoint("other/model"), "huggingface");
    }

    #[tokio::test]
    async fn local_mode_never_goes_remote() {
        let r = router(InferenceMode::Local);
        assert_eq!(
            ran_on(&r, "loadable/model").await.unwrap(),
            "server",
            "a server that can load it"
        );
        let Availability::Unavailable(reason) =
            r.availability(TaskKind::ImageToText, "other/model").await
        else {
            panic!()
        };
        assert!(
            reason.contains("local lacks other/model") && reason.contains("server lacks"),
            "{reason}"
        );
        assert!(matches!(
            ran_on(&r, "other/model").await,
            Err(InferenceError::Unsupported(_))
        ));
    }

    #[tokio::test]
    async fn remote_mode_never_runs_locally() {
        let r = router(InferenceMode::Remote);
        assert_eq!(ran_on(&r, "cached/model").await.unwrap(), "huggingface");
    }

    #[test]
    fn modes_parse() {
        assert_eq!("Hybrid".parse::<InferenceMode>(), Ok(InferenceMode::Hybrid));
        assert_eq!(
            "huggingface".parse::<InferenceMode>(),
            Ok(InferenceMode::Remote)
        );
        assert!("gpu".parse::<InferenceMode>().is_err());
    }
}
