//! Live progress on stderr: one line per task (waiting, choosing a model,
//! running, done/failed/skipped) with elapsed time, while a run goes on.

use hgpt_core::plan::PlanTaskView;
use hgpt_core::record::{RunEvent, TaskStatus};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::BTreeMap;
use std::time::Duration;

/// Draws run events as spinner lines.
pub struct Progress {
    multi: MultiProgress,
    header: ProgressBar,
    tasks: BTreeMap<usize, (String, ProgressBar)>,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl Progress {
    /// Progress lines on stderr (hidden when stderr is not a terminal).
    pub fn new() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let header = multi.add(ProgressBar::new_spinner());
        header.set_style(style("{spinner:.cyan} {msg} [{elapsed}]"));
        header.set_message("planning");
        header.enable_steady_tick(Duration::from_millis(120));
        Self {
            multi,
            header,
            tasks: BTreeMap::new(),
        }
    }

    fn line(&self, id: usize) -> Option<&(String, ProgressBar)> {
        self.tasks.get(&id)
    }

    /// A line for a task, unless it has one (a streamed plan announces
    /// tasks before the plan is complete).
    fn add_line(&mut self, task: &PlanTaskView) {
        if self.tasks.contains_key(&task.id) {
            return;
        }
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(style("  {spinner:.cyan} {prefix:.bold} {msg} [{elapsed}]"));
        bar.set_prefix(format!("#{} {}", task.id, task.task));
        bar.set_message("waiting");
        bar.enable_steady_tick(Duration::from_millis(120));
        self.tasks.insert(task.id, (task.task.clone(), bar));
    }

    /// Update the display for one event.
    pub fn on_event(&mut self, event: &RunEvent) {
        match event {
            RunEvent::TaskPlanned { task } => {
                self.header
                    .set_message("planning (tasks start as they are planned)");
                self.add_line(task);
            }
            RunEvent::Planned { plan, .. } => {
                self.header
                    .finish_with_message(format!("planned {} task(s)", plan.len()));
                for task in plan {
                    self.add_line(task);
                }
            }
            RunEvent::ChatFallback { reason } => {
                self.header
                    .finish_with_message(format!("answering directly ({reason})"));
            }
            RunEvent::Selecting { id } => {
                if let Some((_, bar)) = self.line(*id) {
                    bar.set_message("choosing a model");
                }
            }
            RunEvent::ModelChosen { id, model, .. } => {
                if let Some((_, bar)) = self.line(*id) {
                    bar.set_message(format!("waiting (model: {})", model.id));
                }
            }
            RunEvent::TaskStarted { id, model, .. } => {
                if let Some((_, bar)) = self.line(*id) {
                    bar.reset_elapsed();
                    bar.set_message(format!("running on {}", model.id));
                }
            }
            RunEvent::ModelDownload {
                id,
                model,
                done_bytes,
                total_bytes,
            } => {
                if let Some((_, bar)) = self.line(*id) {
                    let mib = |bytes: &u64| bytes / (1 << 20);
                    bar.set_message(if done_bytes < total_bytes {
                        format!(
                            "downloading {model}: {} of {} MiB",
                            mib(done_bytes),
                            mib(total_bytes)
                        )
                    } else {
                        format!("running on {model}")
                    });
                }
            }
            RunEvent::TaskProgress {
                id,
                model,
                done,
                total,
            } => {
                if let Some((_, bar)) = self.line(*id) {
                    bar.set_message(format!("running on {model}: step {done} of {total}"));
                }
            }
            RunEvent::TaskFinished { record } => {
                if let Some((_, bar)) = self.line(record.id) {
                    let done = match record.status {
                        TaskStatus::Ok => style("  ✔ {prefix:.bold.green} {msg} [{elapsed}]"),
                        TaskStatus::Failed => style("  ✘ {prefix:.bold.red} {msg} [{elapsed}]"),
                        TaskStatus::Skipped => style("  - {prefix:.bold.yellow} {msg}"),
                    };
                    bar.set_style(done);
                    let message = match (&record.status, &record.error) {
                        (TaskStatus::Ok, _) => record
                            .model
                            .as_ref()
                            .map(|m| format!("done with {}", m.id))
                            .unwrap_or_else(|| "done".into()),
                        (_, Some(error)) => error.chars().take(160).collect(),
                        (_, None) => "failed".into(),
                    };
                    bar.finish_with_message(message);
                }
            }
            RunEvent::AnswerStarted => self.finish(),
            RunEvent::AnswerDelta { .. } | RunEvent::Finished { .. } => {}
        }
    }

    /// Stop every spinner, leaving the lines in place.
    pub fn finish(&mut self) {
        if !self.header.is_finished() {
            self.header.finish_and_clear();
        }
        for (_, bar) in self.tasks.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
    }
}
