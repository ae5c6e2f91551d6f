//! The four stages end to end: plan, select, execute, respond.
//!
//! Selection for every task starts the moment the plan exists, concurrently,
//! while execution starts; a task waits only for its own dependencies and its
//! own selection. Along a chain of tasks this costs one selection round-trip
//! in all instead of one per step. A failed model is retried on the next
//! candidate (bounded); a failed task skips its dependents; the answer stage
//! always runs and says what failed.

use crate::backend::{
    ChatMessage, ChatModel, ChatRequest, DownloadProgress, InferenceBackend, InferenceError,
    InferenceRequest, LlmError, MediaStore, ResolvedArgs, StepProgress,
};
use crate::catalog::Catalog;
use crate::execute::{Finished, into_task_output, output_text, resolve_args, truncate_chars};
use crate::plan::{Plan, PlanError, PlanTask, PlanTaskView, parse_and_postprocess};
use crate::plan_stream::{PlanReader, StreamingPlan};
use crate::prompt::{Prompts, TokenCounter, history_as_text, render, trim_history};
use crate::record::{
    ModelChoice, RunEvent, RunMode, RunRecord, SkippedModel, StageTimings, TaskOutput, TaskRecord,
    TaskStatus,
};
use crate::scheduler::{Node, NodeOutcome, run_growing_graph};
use crate::selection::{self, Selection, SelectionConfig};
use crate::shape::{OutputShape, PlanShape};
use crate::task::{TaskKind, TaskName};
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt, Shared};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;

/// Where live events go (`hgpt run` progress, server-sent events).
pub type EventSink = mpsc::UnboundedSender<RunEvent>;

/// Settings of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineConfig {
    /// Candidate selection.
    pub selection: SelectionConfig,
    /// Most tasks running at once.
    pub max_concurrency: usize,
    /// Limit for one task's inference (each attempt).
    pub task_timeout: Duration,
    /// Limit for the execution stage of a run.
    pub run_timeout: Duration,
    /// The controller model's context window, in tokens.
    pub context_window: usize,
    /// Tokens left free for the model's answer when trimming history.
    pub reserve_tokens: usize,
    /// Longest text of one result field sent to the answer stage.
    pub max_result_chars: usize,
    /// Other candidates tried when the chosen model fails.
    pub fallback_models: usize,
    /// Sampling temperature of the planning and answer calls.
    pub temperature: Option<f32>,
    /// Read the plan as the controller writes it and start each task as soon
    /// as it is certain (off: wait for the whole plan).
    pub stream_plan: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            selection: SelectionConfig::default(),
            max_concurrency: 8,
            task_timeout: Duration::from_secs(300),
            run_timeout: Duration::from_secs(1800),
            context_window: 8192,
            reserve_tokens: 800,
            max_result_chars: 2000,
            fallback_models: 1,
            temperature: Some(0.0),
            stream_plan: true,
        }
    }
}

/// Why a run could not produce a record at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PipelineError {
    /// The planning call failed (nothing else has run yet).
    #[error("planning failed: {0}")]
    Planning(LlmError),
}

/// Stage 1's result.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanOutcome {
    /// The planner's raw answer.
    pub raw: String,
    /// The post-processed plan, or why it cannot be used.
    pub plan: Result<Plan, PlanError>,
    /// How long planning took.
    pub elapsed: Duration,
}

/// A plan read as it streamed.
struct StreamedPlan {
    /// The planner's raw answer.
    raw: String,
    /// The whole-plan reading of it.
    finished: Result<Plan, PlanError>,
    /// The tasks handed to execution while it streamed.
    released: Vec<PlanTask>,
    /// Why those tasks do not fit the finished plan (or the call failed).
    problem: Option<String>,
}

/// How planning ended: the plan for the record, or why the run is chat.
struct PlanVerdict {
    raw: String,
    elapsed: Duration,
    /// The plan's tasks, in plan order.
    tasks: Vec<PlanTask>,
    /// Repairs, and what went wrong after tasks had started.
    warnings: Vec<String>,
    /// Why the run is answered as plain chat (nothing was started).
    chat_reason: Option<String>,
}

/// The orchestrator: one per process, shared by runs.
pub struct Pipeline {
    llm: Arc<dyn ChatModel>,
    backend: Arc<dyn InferenceBackend>,
    media: Arc<dyn MediaStore>,
    catalog: Arc<Catalog>,
    prompts: Arc<Prompts>,
    config: PipelineConfig,
    tokens: TokenCounter,
}

/// The reason recorded for text tasks the controller LLM runs itself.
const CONTROLLER_REASON: &str = "a text task the controller LLM can do itself";
/// The endpoint recorded for them.
pub const CONTROLLER_ENDPOINT: &str = "controller-llm";

impl Pipeline {
    /// Assemble a pipeline from its parts.
    pub fn new(
        llm: Arc<dyn ChatModel>,
        backend: Arc<dyn InferenceBackend>,
        media: Arc<dyn MediaStore>,
        catalog: Arc<Catalog>,
        prompts: Arc<Prompts>,
        config: PipelineConfig,
    ) -> Self {
        let tokens = TokenCounter::for_model(llm.model_name());
        Self {
            llm,
            backend,
            media,
            catalog,
            prompts,
            config,
            tokens,
        }
    }

    /// The controller LLM's name (`embedded:FILE` for the embedded one).
    pub fn controller_name(&self) -> &str {
        self.llm.model_name()
    }

    /// The catalog in use.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The planning request: system prompt, demonstrations, then the request
    /// with the chat history that fits the context window.
    pub fn plan_request(&self, request: &str, history: &[ChatMessage]) -> ChatRequest {
        let kinds = self.plannable_tasks();
        let task_types = kinds
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let system = render(&self.prompts.plan.system, &[("task_types", &task_types)]);
        let build = |history: &[ChatMessage]| {
            let mut messages = vec![ChatMessage::system(system.clone())];
            messages.extend(self.prompts.plan.demos.iter().cloned());
            messages.push(ChatMessage::user(render(
                &self.prompts.plan.user,
                &[("context", &history_as_text(history)), ("input", request)],
            )));
            messages
        };
        ChatRequest {
            shape: Some(OutputShape::Plan(PlanShape::new(kinds))),
            ..self.fitted(history, build, self.config.temperature)
        }
    }

    /// The task types the planner may use: the text tasks the controller
    /// does itself, and those the catalog has a model for and the backend
    /// can run (in local mode, only types with a local pipeline). ControlNet
    /// steps are never offered: no backend runs them.
    pub fn plannable_tasks(&self) -> Vec<TaskKind> {
        TaskKind::ALL
            .iter()
            .copied()
            .filter(|k| k.controlnet_model().is_none())
            .filter(|k| {
                k.is_llm_capable()
                    || (self.backend.runs_task(*k)
                        && !self.catalog.ranked(&TaskName::Known(*k)).is_empty())
            })
            .collect()
    }

    /// Stage 1 alone: ask for a plan and post-process it.
    pub async fn plan(
        &self,
        request: &str,
        history: &[ChatMessage],
    ) -> Result<PlanOutcome, PipelineError> {
        let started = Instant::now();
        let (raw, plan) = match self.llm.complete(self.plan_request(request, history)).await {
            Ok(raw) => {
                let plan = parse_and_postprocess(&raw);
                (raw, plan)
            }
            Err(LlmError::Unfinished { text, max_tokens }) => {
                (text, Err(PlanError::Unfinished(max_tokens)))
            }
            Err(e) => return Err(PipelineError::Planning(e)),
        };
        Ok(PlanOutcome {
            raw,
            plan,
            elapsed: started.elapsed(),
        })
    }

    /// All four stages. Events go to `events` as they happen; the record is
    /// complete even when tasks or the answer call failed (see
    /// [`RunRecord::error`]).
    pub async fn run(
        &self,
        request: &str,
        history: &[ChatMessage],
        events: Option<EventSink>,
    ) -> Result<RunRecord, PipelineError> {
        let started = Instant::now();
        let emit = |event: RunEvent| {
            if let Some(sink) = &events {
                let _ = sink.send(event);
            }
        };
        let (batches, incoming) = mpsc::unbounded_channel();
        let planning = self.plan_and_hand_over(request, history, batches, &emit);
        let execution = self.execute(request, incoming, started, events.clone());
        let (verdict, context) = tokio::join!(planning, execution);
        let verdict = verdict?;
        let mut timings = StageTimings {
            plan_ms: ms(verdict.elapsed),
            ..StageTimings::default()
        };
        let mut record = RunRecord {
            request: request.to_string(),
            mode: RunMode::Tasks,
            fallback_reason: None,
            plan: verdict.tasks.iter().map(PlanTaskView::from).collect(),
            plan_warnings: verdict.warnings.clone(),
            plan_raw: Some(verdict.raw),
            tasks: Vec::new(),
            answer: String::new(),
            error: None,
            timings: StageTimings::default(),
            llm_model: self.llm.model_name().to_string(),
        };
        let answer_request = if let Some(reason) = verdict.chat_reason {
            record.mode = RunMode::Chat;
            record.fallback_reason = Some(reason);
            self.chat_request(request, history)
        } else {
            let execution_started = context.first_task_at().unwrap_or(started);
            timings.execution_ms = ms(execution_started.elapsed());
            timings.selection_ms = context
                .last_selection_ms
                .load(Ordering::Relaxed)
                .saturating_sub(timings.plan_ms);
            context.set_order(&verdict.tasks);
            record.tasks = context.into_records();
            self.answer_request(request, &record.tasks)
        };

        let answer_started = Instant::now();
        emit(RunEvent::AnswerStarted);
        match self.stream_answer(answer_request, &emit).await {
            Ok(answer) => record.answer = answer,
            Err((partial, e)) => {
                record.answer = partial;
                record.error = Some(format!("the answer stage failed: {e}"));
            }
        }
        timings.answer_ms = ms(answer_started.elapsed());
        timings.total_ms = ms(started.elapsed());
        record.timings = timings;
        emit(RunEvent::Finished {
            record: Box::new(record.clone()),
        });
        Ok(record)
    }

    /// Plan, hand the plan's tasks to execution on `batches` (each as soon
    /// as it is certain when the plan streams, else the whole plan at once),
    /// and decide how the run is answered. `batches` is dropped when the plan
    /// is complete, which lets execution end.
    async fn plan_and_hand_over(
        &self,
        request: &str,
        history: &[ChatMessage],
        batches: mpsc::UnboundedSender<Vec<PlanTask>>,
        emit: &(impl Fn(RunEvent) + Sync),
    ) -> Result<PlanVerdict, PipelineError> {
        let started = Instant::now();
        let streamed = if self.config.stream_plan {
            self.stream_plan(request, history, &batches, emit).await?
        } else {
            let outcome = self.plan(request, history).await?;
            StreamedPlan {
                raw: outcome.raw,
                finished: outcome.plan,
                released: Vec::new(),
                problem: None,
            }
        };
        let elapsed = started.elapsed();
        let StreamedPlan {
            raw,
            finished,
            released,
            problem,
        } = streamed;
        let mut verdict = PlanVerdict {
            raw,
            elapsed,
            tasks: Vec::new(),
            warnings: Vec::new(),
            chat_reason: None,
        };
        if released.is_empty() {
            // Nothing started: the whole-plan rules decide.
            match finished {
                Err(e) => verdict.chat_reason = Some(format!("the plan could not be used: {e}")),
                Ok(plan) if plan.is_empty() => {
                    verdict.chat_reason = Some("the planner found no task to run".to_string());
                }
                Ok(plan)
                    if plan.tasks.len() == 1
                        && plan.tasks[0].kind().is_some_and(TaskKind::is_llm_capable) =>
                {
                    verdict.chat_reason = Some(format!(
                        "a single {} task is answered by the controller LLM directly",
                        plan.tasks[0].task
                    ));
                }
                Ok(plan) => {
                    verdict.tasks = plan.tasks;
                    verdict.warnings = plan.warnings;
                }
            }
            if verdict.chat_reason.is_none() {
                emit(RunEvent::Planned {
                    plan: verdict.tasks.iter().map(PlanTaskView::from).collect(),
                    warnings: verdict.warnings.clone(),
                });
                let _ = batches.send(verdict.tasks.clone());
            }
        } else {
            match (finished, problem) {
                (Ok(plan), None) => {
                    let remaining: Vec<PlanTask> = plan
                        .tasks
                        .iter()
                        .filter(|t| released.iter().all(|r| r.id != t.id))
                        .cloned()
                        .collect();
                    verdict.tasks = plan.tasks;
                    verdict.warnings = plan.warnings;
                    emit(RunEvent::Planned {
                        plan: verdict.tasks.iter().map(PlanTaskView::from).collect(),
                        warnings: verdict.warnings.clone(),
                    });
                    if !remaining.is_empty() {
                        let _ = batches.send(remaining);
                    }
                }
                // The tasks already started stay in the run; nothing else of
                // the plan runs.
                (finished, problem) => {
                    let problem = problem.unwrap_or_else(|| match &finished {
                        Err(e) => e.to_string(),
                        Ok(_) => "the plan changed after tasks had started".to_string(),
                    });
                    verdict.warnings = finished.map(|p| p.warnings).unwrap_or_default();
                    verdict.warnings.push(format!(
                        "the plan could not be used past the tasks already started: {problem}"
                    ));
                    verdict.tasks = released;
                    emit(RunEvent::Planned {
                        plan: verdict.tasks.iter().map(PlanTaskView::from).collect(),
                        warnings: verdict.warnings.clone(),
                    });
                }
            }
        }
        if let Some(reason) = &verdict.chat_reason {
            emit(RunEvent::ChatFallback {
                reason: reason.clone(),
            });
        }
        Ok(verdict)
    }

    /// Stage 1 streamed: read the plan as it arrives and hand each task to
    /// execution the moment it is certain (see [`StreamingPlan`]). A failed
    /// planning call is an error only while nothing has started.
    async fn stream_plan(
        &self,
        request: &str,
        history: &[ChatMessage],
        batches: &mpsc::UnboundedSender<Vec<PlanTask>>,
        emit: &(impl Fn(RunEvent) + Sync),
    ) -> Result<StreamedPlan, PipelineError> {
        let mut stream = self
            .llm
            .stream(self.plan_request(request, history))
            .await
            .map_err(PipelineError::Planning)?;
        let mut reader = PlanReader::new();
        let mut plan = StreamingPlan::new();
        let mut ended: Option<LlmError> = None;
        while let Some(piece) = stream.next().await {
            match piece {
                Ok(text) => {
                    for item in reader.push(&text) {
                        let ready = plan.push(&item);
                        if ready.is_empty() {
                            continue;
                        }
                        for task in &ready {
                            emit(RunEvent::TaskPlanned {
                                task: PlanTaskView::from(task),
                            });
                        }
                        let _ = batches.send(ready);
                    }
                }
                Err(error) => {
                    ended = Some(error);
                    break;
                }
            }
        }
        let raw = reader.into_text();
        let finished = match ended {
            None => parse_and_postprocess(&raw),
            Some(LlmError::Unfinished { max_tokens, .. }) => Err(PlanError::Unfinished(max_tokens)),
            Some(error) if plan.released().is_empty() => {
                return Err(PipelineError::Planning(error));
            }
            Some(error) => {
                return Ok(StreamedPlan {
                    finished: parse_and_postprocess(&raw),
                    raw,
                    released: plan.released().to_vec(),
                    problem: Some(format!("the planning call failed: {error}")),
                });
            }
        };
        Ok(StreamedPlan {
            problem: plan.reconcile(&finished).err(),
            released: plan.released().to_vec(),
            finished,
            raw,
        })
    }

    /// The request `build` makes from as much recent history as fits.
    fn fitted(
        &self,
        history: &[ChatMessage],
        build: impl Fn(&[ChatMessage]) -> Vec<ChatMessage>,
        temperature: Option<f32>,
    ) -> ChatRequest {
        let kept = trim_history(
            history,
            &self.tokens,
            self.config.context_window,
            self.config.reserve_tokens,
            &build,
        );
        ChatRequest {
            messages: build(kept),
            temperature,
            ..ChatRequest::default()
        }
    }

    fn chat_request(&self, request: &str, history: &[ChatMessage]) -> ChatRequest {
        let build = |history: &[ChatMessage]| {
            let mut messages = vec![ChatMessage::system(self.prompts.chat_system.clone())];
            messages.extend(history.iter().cloned());
            messages.push(ChatMessage::user(request));
            messages
        };
        self.fitted(history, build, None)
    }

    /// The response-stage request, with results cut to fit the context.
    pub fn answer_request(&self, request: &str, records: &[TaskRecord]) -> ChatRequest {
        let mut limit = self.config.max_result_chars.max(64);
        loop {
            let results = results_for_prompt(records, limit);
            let mut messages = vec![ChatMessage::system(self.prompts.answer.system.clone())];
            messages.extend(self.prompts.answer.demos.iter().cloned());
            messages.push(ChatMessage::user(render(
                &self.prompts.answer.user,
                &[("input", request), ("results", &results)],
            )));
            let fits = self.tokens.count_messages(&messages) + self.config.reserve_tokens
                <= self.config.context_window;
            if fits || limit <= 64 {
                return ChatRequest {
                    messages,
                    temperature: self.config.temperature,
                    ..ChatRequest::default()
                };
            }
            limit /= 2;
        }
    }

    async fn stream_answer(
        &self,
        request: ChatRequest,
        emit: &impl Fn(RunEvent),
    ) -> Result<String, (String, LlmError)> {
        let mut answer = String::new();
        let mut stream = self
            .llm
            .stream(request)
            .await
            .map_err(|e| (String::new(), e))?;
        while let Some(delta) = stream.next().await {
            match delta {
                Ok(text) => {
                    answer.push_str(&text);
                    emit(RunEvent::AnswerDelta { text });
                }
                Err(e) => return Err((answer, e)),
            }
        }
        Ok(answer)
    }

    /// Run the tasks that arrive on `incoming`, in batches (the whole plan
    /// at once, or tasks as a streamed plan releases them), until the sender
    /// is gone and every task has ended.
    async fn execute(
        &self,
        request: &str,
        mut incoming: mpsc::UnboundedReceiver<Vec<PlanTask>>,
        started: Instant,
        events: Option<EventSink>,
    ) -> Arc<RunContext> {
        let context = Arc::new(RunContext {
            inference_slots: Semaphore::new(self.config.max_concurrency.max(1)),
            selection_slots: Semaphore::new(MAX_CONCURRENT_SELECTIONS),
            selection_tasks: Mutex::new(BTreeMap::new()),
            skipped: Mutex::new(BTreeMap::new()),
            llm: self.llm.clone(),
            backend: self.backend.clone(),
            media: self.media.clone(),
            prompts: self.prompts.clone(),
            config: self.config.clone(),
            request: request.to_string(),
            started,
            events,
            selections: Mutex::new(BTreeMap::new()),
            finished: Mutex::new(BTreeMap::new()),
            records: Mutex::new(BTreeMap::new()),
            last_selection_ms: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
            first_task_at: OnceLock::new(),
        });
        // The time limit counts from the first task handed over.
        let Some(first) = incoming.recv().await else {
            return context;
        };
        let _ = context.first_task_at.set(Instant::now());
        let (nodes, graph_incoming) = mpsc::unbounded_channel();
        let feeder = {
            let context = context.clone();
            let catalog = self.catalog.clone();
            async move {
                let mut next = Some(first);
                while let Some(batch) = match next.take() {
                    Some(batch) => Some(batch),
                    None => incoming.recv().await,
                } {
                    context.add_tasks(&batch, &catalog);
                    let batch_nodes = batch
                        .iter()
                        .map(|t| Node {
                            id: t.id,
                            deps: t.dep.clone(),
                        })
                        .collect();
                    if nodes.send(batch_nodes).is_err() {
                        break;
                    }
                }
            }
        };
        // Tasks wait for their models and dependencies without holding a slot;
        // `inference_slots` caps the tasks actually running.
        let deadline = tokio::time::Instant::now().checked_add(self.config.run_timeout);
        let graph = run_growing_graph(
            graph_incoming,
            usize::MAX,
            deadline,
            |id| context.clone().execute_task(id),
            |id, because| {
                context.abort_selection(id);
                context.finish_unrun(
                    id,
                    TaskStatus::Skipped,
                    format!("skipped: task {because} did not succeed"),
                )
            },
        );
        let (outcomes, ()) = tokio::join!(graph, feeder);
        context.abort_selections();
        let limit = self.config.run_timeout.as_secs_f64();
        for (id, outcome) in outcomes {
            match outcome {
                NodeOutcome::Cancelled => context.finish_unrun(
                    id,
                    TaskStatus::Failed,
                    format!("cancelled: the run exceeded its time limit of {limit} s"),
                ),
                // A no-op unless the task's body died without recording an end.
                NodeOutcome::Failed => context.finish_unrun(
                    id,
                    TaskStatus::Failed,
                    "the task stopped unexpectedly".to_string(),
                ),
                NodeOutcome::Succeeded | NodeOutcome::Skipped { .. } => {}
            }
        }
        context
    }
}

type SharedSelection = Shared<BoxFuture<'static, Result<Selection, String>>>;

/// Selections (each an LLM call after availability checks) running at once.
/// They start in dependency-level order, so the ones that wait for a slot
/// belong to tasks that cannot start yet anyway.
const MAX_CONCURRENT_SELECTIONS: usize = 16;

/// Shared state of one run's execution stage.
struct RunContext {
    llm: Arc<dyn ChatModel>,
    backend: Arc<dyn InferenceBackend>,
    media: Arc<dyn MediaStore>,
    prompts: Arc<Prompts>,
    config: PipelineConfig,
    request: String,
    started: Instant,
    events: Option<EventSink>,
    /// The tasks handed to execution so far (in plan order once the plan is
    /// complete, see [`RunContext::set_order`]).
    tasks: Mutex<Vec<PlanTask>>,
    /// When the first task was handed over.
    first_task_at: OnceLock<Instant>,
    selections: Mutex<BTreeMap<usize, SharedSelection>>,
    selection_tasks: Mutex<BTreeMap<usize, AbortHandle>>,
    /// Per task, the catalog models selection did not offer, and why.
    skipped: Mutex<BTreeMap<usize, Vec<SkippedModel>>>,
    selection_slots: Semaphore,
    inference_slots: Semaphore,
    finished: Mutex<BTreeMap<usize, Finished>>,
    records: Mutex<BTreeMap<usize, TaskRecord>>,
    last_selection_ms: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl RunContext {
    fn emit(&self, event: RunEvent) {
        if let Some(sink) = &self.events {
            let _ = sink.send(event);
        }
    }

    fn now_ms(&self) -> u64 {
        ms(self.started.elapsed())
    }

    /// When the first task was handed over (`None`: none was).
    fn first_task_at(&self) -> Option<Instant> {
        self.first_task_at.get().copied()
    }

    /// The task with this id, if it was handed to execution.
    fn task(&self, id: usize) -> Option<PlanTask> {
        lock(&self.tasks).iter().find(|t| t.id == id).cloned()
    }

    /// Take a batch of tasks and start the selection of each that needs
    /// one, concurrently, now.
    fn add_tasks(self: &Arc<Self>, batch: &[PlanTask], catalog: &Arc<Catalog>) {
        lock(&self.tasks).extend(batch.iter().cloned());
        let mut selections = lock(&self.selections);
        let batch_plan = Plan {
            tasks: batch.to_vec(),
            warnings: Vec::new(),
        };
        let levels = batch_plan.levels();
        let mut in_level_order: Vec<&PlanTask> = batch.iter().collect();
        in_level_order.sort_by_key(|t| levels.get(&t.id).copied().unwrap_or_default());
        for task in in_level_order {
            let Some(kind) = task.kind() else { continue };
            if kind.is_llm_capable() {
                continue;
            }
            self.emit(RunEvent::Selecting { id: task.id });
            let this = self.clone();
            let catalog = catalog.clone();
            let args = Value::Object(task.args.clone().into_iter().collect());
            let id = task.id;
            let handle = tokio::spawn(async move {
                let result = match this.selection_slots.acquire().await {
                    Ok(_slot) => this.select(id, &catalog, kind, &args).await,
                    Err(_) => Err("model selection was cancelled".to_string()),
                };
                this.last_selection_ms
                    .fetch_max(this.now_ms(), Ordering::Relaxed);
                let pending = lock(&this.records)
                    .get(&id)
                    .is_none_or(|r| r.finished_ms.is_none());
                if let (Ok(selection), true) = (&result, pending) {
                    this.emit(RunEvent::ModelChosen {
                        id,
                        model: selection.choice.clone(),
                        endpoint: selection.endpoint.clone(),
                    });
                }
                result
            });
            lock(&self.selection_tasks).insert(id, handle.abort_handle());
            let shared = handle
                .map(|joined| {
                    joined.unwrap_or_else(|e| Err(format!("model selection crashed: {e}")))
                })
                .boxed()
                .shared();
            selections.insert(task.id, shared);
        }
    }

    /// Stop the selection of a task that will never run.
    fn abort_selection(&self, id: usize) {
        if let Some(handle) = lock(&self.selection_tasks).remove(&id) {
            handle.abort();
        }
    }

    /// Stop every selection still running (execution is over), so none
    /// outlives the run or emits events after it.
    fn abort_selections(&self) {
        for (_, handle) in std::mem::take(&mut *lock(&self.selection_tasks)) {
            handle.abort();
        }
    }

    async fn select(
        &self,
        id: usize,
        catalog: &Catalog,
        kind: TaskKind,
        args: &Value,
    ) -> Result<Selection, String> {
        if let Some(model) = kind.controlnet_model() {
            return Ok(Selection {
                choice: ModelChoice {
                    id: model.to_string(),
                    reason: "ControlNet tasks use the matching lllyasviel ControlNet model"
                        .to_string(),
                },
                endpoint: self.backend.endpoint(model),
                alternatives: Vec::new(),
            });
        }
        let config = &self.config.selection;
        let found = selection::candidates(catalog, self.backend.as_ref(), kind, config).await;
        let first_refusal = found
            .refused
            .first()
            .map(|skipped| format!("{}: {}", skipped.id, skipped.reason));
        if !found.refused.is_empty() {
            lock(&self.skipped).insert(id, found.refused);
        }
        selection::choose(
            self.llm.as_ref(),
            &self.prompts.select,
            &self.request,
            kind,
            args,
            found.usable,
            config,
        )
        .await
        .map_err(|e| match e {
            selection::SelectionError::NoModel { task, .. } => selection::SelectionError::NoModel {
                task,
                reason: first_refusal,
            }
            .to_string(),
        })
    }

    fn base_record(task: &PlanTask) -> TaskRecord {
        let view = PlanTaskView::from(task);
        TaskRecord {
            id: task.id,
            task: view.task,
            dep: view.dep,
            args: task.args.clone(),
            model: None,
            endpoint: None,
            skipped_models: Vec::new(),
            status: TaskStatus::Failed,
            output: None,
            error: None,
            started_ms: None,
            finished_ms: None,
        }
    }

    /// Record a task that never ran (skipped or cancelled).
    fn finish_unrun(&self, id: usize, status: TaskStatus, reason: String) {
        let Some(task) = self.task(id) else {
            return;
        };
        let mut records = lock(&self.records);
        let record = records
            .entry(id)
            .or_insert_with(|| Self::base_record(&task));
        if record.finished_ms.is_some() {
            return;
        }
        record.status = status;
        record.error = Some(reason);
        record.finished_ms = Some(self.now_ms());
        record.skipped_models = lock(&self.skipped).get(&id).cloned().unwrap_or_default();
        let snapshot = record.clone();
        drop(records);
        self.emit(RunEvent::TaskFinished {
            record: Box::new(snapshot),
        });
    }

    fn finish(
        &self,
        mut record: TaskRecord,
        result: Result<(TaskOutput, BTreeMap<String, Value>), String>,
    ) -> bool {
        record.finished_ms = Some(self.now_ms());
        record.skipped_models = lock(&self.skipped)
            .get(&record.id)
            .cloned()
            .unwrap_or_default();
        let ok = match result {
            Ok((output, inputs)) => {
                record.status = TaskStatus::Ok;
                record.output = Some(output.clone());
                lock(&self.finished).insert(record.id, Finished { output, inputs });
                true
            }
            Err(error) => {
                record.status = TaskStatus::Failed;
                record.error = Some(error);
                false
            }
        };
        lock(&self.records).insert(record.id, record.clone());
        self.emit(RunEvent::TaskFinished {
            record: Box::new(record),
        });
        ok
    }

    async fn execute_task(self: Arc<Self>, id: usize) -> bool {
        let Some(task) = self.task(id) else {
            return false;
        };
        let mut record = Self::base_record(&task);
        // Keep a record in place so a cancelled run still shows what ran.
        lock(&self.records).insert(id, record.clone());
        let kind = match &task.task {
            TaskName::Known(kind) => *kind,
            TaskName::Unknown(name) => {
                return self.finish(
                    record,
                    Err(format!(
                        "unknown task type {name:?}: hgpt has no model for it"
                    )),
                );
            }
        };
        let selection = if kind.is_llm_capable() {
            Ok(Selection {
                choice: ModelChoice {
                    id: self.llm.model_name().to_string(),
                    reason: CONTROLLER_REASON.to_string(),
                },
                endpoint: CONTROLLER_ENDPOINT.to_string(),
                alternatives: Vec::new(),
            })
        } else {
            let pending = lock(&self.selections).get(&id).cloned();
            match pending {
                Some(pending) => pending.await,
                None => Err(format!("no model selection was started for {kind}")),
            }
        };
        let selection = match selection {
            Ok(selection) => selection,
            Err(error) => return self.finish(record, Err(error)),
        };
        let Ok(_slot) = self.inference_slots.acquire().await else {
            return self.finish(record, Err("the run was shut down".to_string()));
        };
        record.model = Some(selection.choice.clone());
        record.endpoint = Some(selection.endpoint.clone());
        let at_ms = self.now_ms();
        record.started_ms = Some(at_ms);
        lock(&self.records).insert(id, record.clone());
        self.emit(RunEvent::TaskStarted {
            id,
            at_ms,
            model: selection.choice.clone(),
            endpoint: selection.endpoint.clone(),
        });

        let finished = lock(&self.finished).clone();
        let (args, shown) = match resolve_args(&task, &finished, self.media.as_ref()).await {
            Ok(resolved) => resolved,
            Err(error) => return self.finish(record, Err(error)),
        };
        record.args = shown.clone();
        let result = if kind.is_llm_capable() {
            self.run_text_task(kind, &args).await
        } else {
            self.run_model(kind, &args, selection, &mut record).await
        };
        self.finish(record, result.map(|output| (output, shown)))
    }

    /// Run on the chosen model; on a model failure try the next candidates.
    async fn run_model(
        &self,
        kind: TaskKind,
        args: &ResolvedArgs,
        selection: Selection,
        record: &mut TaskRecord,
    ) -> Result<TaskOutput, String> {
        let fallbacks = selection
            .alternatives
            .into_iter()
            .take(self.config.fallback_models);
        let mut attempts = vec![(selection.choice, selection.endpoint)];
        attempts.extend(fallbacks.map(|c| {
            let reason = "next-ranked candidate".to_string();
            (
                ModelChoice {
                    id: c.entry.id,
                    reason,
                },
                c.endpoint,
            )
        }));
        let mut failures: Vec<String> = Vec::new();
        let total = attempts.len();
        for (attempt, (choice, endpoint)) in attempts.into_iter().enumerate() {
            let request = InferenceRequest {
                task: kind,
                model: choice.id.clone(),
                args: args.clone(),
            };
            // A download is not part of the task's time limit.
            let outcome = match self.prepare(record.id, kind, &choice.id).await {
                Err(error) => Err(error),
                Ok(()) => match tokio::time::timeout(
                    self.config.task_timeout,
                    self.infer_reporting_steps(record.id, &request),
                )
                .await
                {
                    Ok(result) => result,
                    Err(_) => Err(InferenceError::Timeout {
                        model: choice.id.clone(),
                        after: self.config.task_timeout,
                    }),
                },
            };
            match outcome {
                Ok(output) => {
                    if !failures.is_empty() {
                        record.model = Some(ModelChoice {
                            id: choice.id,
                            reason: format!(
                                "{} (fallback after: {})",
                                choice.reason,
                                failures.join("; ")
                            ),
                        });
                        record.endpoint = Some(endpoint);
                    }
                    return into_task_output(kind, output, args, self.media.as_ref()).await;
                }
                Err(error) => {
                    let worth_another = !matches!(
                        error,
                        InferenceError::BadInput { .. } | InferenceError::Unsupported(_)
                    );
                    failures.push(error.to_string());
                    if !worth_another || attempt + 1 == total {
                        break;
                    }
                    tracing::warn!("{error}; trying the next candidate");
                }
            }
        }
        Err(failures.join("; then "))
    }

    /// Let the backend make the model ready (download it), reporting the
    /// download as [`RunEvent::ModelDownload`] events at most every 200 ms.
    async fn prepare(&self, id: usize, kind: TaskKind, model: &str) -> Result<(), InferenceError> {
        let sink = self.events.clone();
        let last_sent: Mutex<Option<Instant>> = Mutex::new(None);
        let model_id = model.to_string();
        let progress = move |p: DownloadProgress| {
            let Some(sink) = &sink else { return };
            let mut last = lock(&last_sent);
            let done = p.done_bytes >= p.total_bytes;
            if !done && last.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
                return;
            }
            *last = Some(Instant::now());
            let _ = sink.send(RunEvent::ModelDownload {
                id,
                model: model_id.clone(),
                done_bytes: p.done_bytes,
                total_bytes: p.total_bytes,
            });
        };
        self.backend.prepare(kind, model, &progress).await
    }

    /// Run a request, reporting its model's steps as [`RunEvent::TaskProgress`]
    /// events at most every 200 ms (and always the last step).
    async fn infer_reporting_steps(
        &self,
        id: usize,
        request: &InferenceRequest,
    ) -> Result<crate::output::InferenceOutput, InferenceError> {
        let Some(sink) = self.events.clone() else {
            return self.backend.infer(request).await;
        };
        let last_sent: Mutex<Option<Instant>> = Mutex::new(None);
        let model = request.model.clone();
        let progress = move |p: StepProgress| {
            let mut last = lock(&last_sent);
            let done = p.done >= p.total;
            if !done && last.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
                return;
            }
            *last = Some(Instant::now());
            let _ = sink.send(RunEvent::TaskProgress {
                id,
                model: model.clone(),
                done: p.done,
                total: p.total,
            });
        };
        self.backend.infer_with_progress(request, &progress).await
    }

    /// Text tasks the controller LLM can do, run with a short instruction.
    async fn run_text_task(
        &self,
        kind: TaskKind,
        args: &ResolvedArgs,
    ) -> Result<TaskOutput, String> {
        let text = args
            .text
            .clone()
            .or_else(|| args.other_text("context"))
            .unwrap_or_default();
        if text.trim().is_empty() {
            return Err(format!("bad input for {kind}: no text to work on"));
        }
        let target = ["tgt_lang", "target_language", "target", "language"]
            .iter()
            .find_map(|k| args.other_text(k));
        let instructions = match (kind, target) {
            (TaskKind::Summarization, _) => "Summarize the input concisely.".to_string(),
            (TaskKind::Translation, Some(target)) => format!("Translate the input into {target}."),
            (TaskKind::Translation, None) => format!(
                "Translate the input into the language the user asks for in their request: {:?}.",
                self.request
            ),
            _ => format!("Follow the user's overall request: {:?}.", self.request),
        };
        let prompt = render(
            &self.prompts.text_task,
            &[
                ("task", kind.as_str()),
                ("instructions", &instructions),
                ("text", &text),
            ],
        );
        let request = ChatRequest {
            messages: vec![ChatMessage::user(prompt)],
            temperature: self.config.temperature,
            ..ChatRequest::default()
        };
        let answer = tokio::time::timeout(self.config.task_timeout, self.llm.complete(request))
            .await
            .map_err(|_| format!("the controller LLM timed out on {kind}"))?
            .map_err(|e| e.to_string())?;
        Ok(TaskOutput {
            generated_text: Some(answer.trim().to_string()),
            ..TaskOutput::default()
        })
    }

    /// Put the tasks in the finished plan's order, for the record: the
    /// plan's tasks that were handed over first, then any it does not have.
    fn set_order(&self, plan: &[PlanTask]) {
        let mut tasks = lock(&self.tasks);
        let mut ordered: Vec<PlanTask> = plan
            .iter()
            .filter(|p| tasks.iter().any(|t| t.id == p.id))
            .cloned()
            .collect();
        ordered.extend(
            tasks
                .iter()
                .filter(|t| plan.iter().all(|p| p.id != t.id))
                .cloned(),
        );
        *tasks = ordered;
    }

    fn into_records(self: Arc<Self>) -> Vec<TaskRecord> {
        let mut records = lock(&self.records);
        lock(&self.tasks)
            .iter()
            .map(|task| {
                records
                    .remove(&task.id)
                    .unwrap_or_else(|| Self::base_record(task))
            })
            .collect()
    }
}

/// Task records as compact JSON for the answer prompt, every long text cut
/// to `limit` characters and long lists to their first items, with notes.
pub fn results_for_prompt(records: &[TaskRecord], limit: usize) -> String {
    let items: Vec<Value> = records
        .iter()
        .map(|r| {
            let mut item = json!({
                "id": r.id,
                "task": r.task,
                "args": cut_value(&json!(r.args), limit),
                "status": r.status,
            });
            if let Some(model) = &r.model {
                item["model"] =
                    json!({"id": model.id, "reason": cut_value(&json!(model.reason), limit)});
            }
            if let Some(output) = &r.output {
                let mut shown = serde_json::to_value(output).unwrap_or(Value::Null);
                if let Some(predicted) = &output.predicted
                    && output.generated_text.is_none()
                {
                    shown["summary"] = json!(output_text(&TaskOutput {
                        predicted: Some(predicted.clone()),
                        ..TaskOutput::default()
                    }));
                }
                item["output"] = cut_value(&shown, limit);
            }
            if let Some(error) = &r.error {
                item["error"] = json!(truncate_chars(error, limit));
            }
            item
        })
        .collect();
    serde_json::to_string_pretty(&items).unwrap_or_else(|_| "[]".to_string())
}

const MAX_LIST_ITEMS: usize = 20;

fn cut_value(value: &Value, limit: usize) -> Value {
    match value {
        Value::String(s) => Value::String(truncate_chars(s, limit)),
        Value::Array(items) if is_number_tensor(items) => {
            json!(format!(
                "[numeric array with {} values, omitted]",
                count_numbers(value)
            ))
        }
        Value::Array(items) => {
            let mut kept: Vec<Value> = items
                .iter()
                .take(MAX_LIST_ITEMS)
                .map(|v| cut_value(v, limit))
                .collect();
            if items.len() > MAX_LIST_ITEMS {
                kept.push(json!(format!(
                    "[cut: {} more items]",
                    items.len() - MAX_LIST_ITEMS
                )));
            }
            Value::Array(kept)
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), cut_value(v, limit)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn is_number_tensor(items: &[Value]) -> bool {
    items.len() > MAX_LIST_ITEMS && items.iter().all(|v| v.is_number() || v.is_array())
        || items.first().is_some_and(Value::is_array)
            && count_numbers(&Value::Array(items.to_vec())) > MAX_LIST_ITEMS
}

fn count_numbers(value: &Value) -> usize {
    match value {
        Value::Array(items) => items.iter().map(count_numbers).sum(),
        Value::Number(_) => 1,
        _ => 0,
    }
}
