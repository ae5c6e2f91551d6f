//! Where each model runs: `local`, `remote` or `hybrid` inference.
//!
//! [`RoutedBackend`] puts local tiers (the in-process runtime, local model
//! servers) in front of a remote backend. In hybrid mode a model runs on the
//! first local tier that says it is available (cached, or loaded on a model
//! server) and remotely otherwise, or downloaded to a local tier when the
//! remote backend does not serve it; local mode never goes remote; remote
//! mode never runs locally. The endpoint shown to the LLM during selection is the
//! tier the model would run on, so the selection prompt can prefer local ones.

use crate::backend::{
    Availability, InferenceBackend, InferenceError, InferenceRequest, ProgressFn, StepProgressFn,
};
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
    ///
    /// A local tier that has the model wins. Otherwise local mode takes the
    /// first local tier that can get it (load it, or download it on first
    /// use); hybrid mode runs it remotely unless the remote backend says it
    /// cannot (no token, not served), in which case a local tier that can
    /// download it does.
    async fn route(&self, task: TaskKind, model: &str) -> (Option<Tier>, Availability) {
        let mut reasons = Vec::new();
        let mut fallback = None;
        if self.mode != InferenceMode::Remote {
            for (i, backend) in self.local.iter().enumerate() {
                match backend.availability(task, model).await {
                    Availability::Available => {
                        return (Some(Tier::Local(i)), Availability::Available);
                    }
                    Availability::Unavailable(reason) => reasons.push(reason),
                    // Loadable by a model server, or downloadable: not yet here.
                    Availability::Unknown if self.mode == InferenceMode::Local => {
                        fallback.get_or_insert((Tier::Local(i), Availability::Unknown));
                    }
                    Availability::Unknown => {}
                    pullable @ Availability::Pullable(_) => {
                        fallback.get_or_insert((Tier::Local(i), pullable));
                    }
                }
            }
        }
        if self.mode == InferenceMode::Local {
            if let Some((tier, availability)) = fallback {
                return (Some(tier), availability);
            }
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
        let remote = self.remote.availability(task, model).await;
        match (fallback, &remote) {
            (Some((tier, pullable)), Availability::Unavailable(_)) => (Some(tier), pullable),
            _ => (Some(Tier::Remote), remote),
        }
    }

    fn remember(&self, model: &str, tier: Option<Tier>) {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        match tier {
            Some(tier) => routes.insert(model.to_string(), tier),
            None => routes.remove(model),
        };
    }

    /// The tier chosen for a model (routing it now if selection did not).
    async fn tier_for(&self, task: TaskKind, model: &str) -> Result<Tier, InferenceError> {
        if let Some(tier) = self.remembered(model) {
            return Ok(tier);
        }
        let (tier, availability) = self.route(task, model).await;
        self.remember(model, tier);
        tier.ok_or_else(|| {
            let reason = match availability {
                Availability::Unavailable(reason) => reason,
                _ => "no tier can run it".to_string(),
            };
            InferenceError::Unsupported(format!("{model}: {reason}"))
        })
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

    fn runs_task(&self, task: TaskKind) -> bool {
        let local = self.local.iter().any(|b| b.runs_task(task));
        match self.mode {
            InferenceMode::Local => local,
            InferenceMode::Remote => self.remote.runs_task(task),
            InferenceMode::Hybrid => local || self.remote.runs_task(task),
        }
    }

    async fn availability(&self, task: TaskKind, model: &str) -> Availability {
        let (tier, availability) = self.route(task, model).await;
        self.remember(model, tier);
        availability
    }

    async fn prepare(
        &self,
        task: TaskKind,
        model: &str,
        progress: ProgressFn<'_>,
    ) -> Result<(), InferenceError> {
        let tier = self.tier_for(task, model).await?;
        self.tier(tier).prepare(task, model, progress).await
    }

    async fn infer(&self, request: &InferenceRequest) -> Result<InferenceOutput, InferenceError> {
        let tier = self.tier_for(request.task, &request.model).await?;
        self.tier(tier).infer(request).await
    }

    async fn infer_with_progress(
        &self,
        request: &InferenceRequest,
        progress: StepProgressFn<'_>,
    ) -> Result<InferenceOutput, InferenceError> {
        let tier = self.tier_for(request.task, &request.model).await?;
        self.tier(tier).infer_with_progress(request, progress).await
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
    async fn uncached_models_are_pulled_when_not_served_remotely() {
        let pull = || Availability::Pullable("downloads on first use".into());
        let routed = |mode| {
            let in_process = Tier(
                "local",
                vec![("served/model", pull()), ("unserved/model", pull())],
            );
            // Models the remote tier does not list are unavailable there.
            let remote = Tier(
                "huggingface",
                vec![("served/model", Availability::Available)],
            );
            RoutedBackend::new(mode, vec![Arc::new(in_process)], Arc::new(remote))
        };
        let hybrid = routed(InferenceMode::Hybrid);
        assert_eq!(
            ran_on(&hybrid, "served/model").await.unwrap(),
            "huggingface"
        );
        assert_eq!(
            hybrid
                .availability(TaskKind::ImageToText, "unserved/model")
                .await,
            pull()
        );
        assert_eq!(ran_on(&hybrid, "unserved/model").await.unwrap(), "local");
        let local = routed(InferenceMode::Local);
        assert_eq!(ran_on(&local, "served/model").await.unwrap(), "local");
    }

    #[tokio::test]
    async fn remote_mode_never_runs_locally() {
        let r = router(InferenceMode::Remote);
        assert_eq!(ran_on(&r, "cached/model").await.unwrap(), "huggingface");
    }

    /// A local runtime with a pipeline for image captioning only.
    struct CaptionsOnly;

    #[async_trait]
    impl InferenceBackend for CaptionsOnly {
        fn endpoint(&self, _model: &str) -> String {
            "local".into()
        }
        fn runs_task(&self, task: TaskKind) -> bool {
            task == TaskKind::ImageToText
        }
        async fn availability(&self, _task: TaskKind, _model: &str) -> Availability {
            Availability::Available
        }
        async fn infer(
            &self,
            _request: &InferenceRequest,
        ) -> Result<InferenceOutput, InferenceError> {
            Ok(InferenceOutput::Text("caption".into()))
        }
    }

    #[test]
    fn local_mode_runs_only_the_task_types_of_its_local_tiers() {
        let routed = |mode| {
            RoutedBackend::new(
                mode,
                vec![Arc::new(CaptionsOnly)],
                Arc::new(Tier("huggingface", vec![])),
            )
        };
        let local = routed(InferenceMode::Local);
        assert!(local.runs_task(TaskKind::ImageToText));
        assert!(!local.runs_task(TaskKind::TextToImage));
        for mode in [InferenceMode::Hybrid, InferenceMode::Remote] {
            assert!(routed(mode).runs_task(TaskKind::TextToImage), "{mode:?}");
        }
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
