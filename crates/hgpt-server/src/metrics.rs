//! Counters and histograms for `GET /metrics`, in the Prometheus text format.

use hgpt_core::record::RunRecord;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A latency histogram.
#[derive(Default)]
struct Histogram {
    /// Observations at or under each bound (cumulative at render time).
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

impl Histogram {
    fn observe_ms(&self, ms: u64) {
        let seconds = ms as f64 / 1000.0;
        if let Some(bucket) = BUCKETS.iter().position(|&bound| seconds <= bound) {
            self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// The stages whose latency is recorded.
const STAGES: [&str; 5] = ["plan", "selection", "execution", "answer", "total"];

/// What the server counts.
#[derive(Default)]
pub(crate) struct Metrics {
    /// Ended runs by final state.
    finished: Mutex<BTreeMap<&'static str, u64>>,
    /// Runs refused with 429.
    rejected: AtomicU64,
    /// Stage latencies, in the order of [`STAGES`].
    stages: [Histogram; STAGES.len()],
    /// Failed tasks by the endpoint they ran on.
    task_failures: Mutex<BTreeMap<String, u64>>,
    /// Runs whose controller LLM call failed (planning or answer).
    llm_failures: AtomicU64,
}

/// Gauges read at render time.
pub(crate) struct Gauges {
    /// Runs waiting for a slot.
    pub queued: usize,
    /// Runs running.
    pub running: usize,
    /// Runs in the store, by state.
    pub stored: Vec<(String, u64)>,
    /// Store writes that failed.
    pub store_failures: u64,
}

impl Metrics {
    /// A run ended in `state`.
    pub(crate) fn run_finished(&self, state: &'static str) {
        if let Ok(mut finished) = self.finished.lock() {
            *finished.entry(state).or_default() += 1;
        }
    }

    /// A run was refused for lack of room.
    pub(crate) fn run_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// A task failed on `endpoint`.
    pub(crate) fn task_failed(&self, endpoint: &str) {
        if let Ok(mut failures) = self.task_failures.lock() {
            *failures.entry(endpoint.to_string()).or_default() += 1;
        }
    }

    /// A controller LLM call failed.
    pub(crate) fn llm_failed(&self) {
        self.llm_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The stage timings of a finished run.
    pub(crate) fn observe(&self, record: &RunRecord) {
        let timings = &record.timings;
        let values = [
            timings.plan_ms,
            timings.selection_ms,
            timings.execution_ms,
            timings.answer_ms,
            timings.total_ms,
        ];
        for (histogram, ms) in self.stages.iter().zip(values) {
            histogram.observe_ms(ms);
        }
    }

    /// The mean duration of finished runs, in seconds (none yet: `None`).
    pub(crate) fn mean_run_seconds(&self) -> Option<f64> {
        let total = &self.stages[STAGES.len() - 1];
        let count = total.count.load(Ordering::Relaxed);
        (count > 0).then(|| total.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0 / count as f64)
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP hgpt_runs Runs in the server now, by state.\n# TYPE hgpt_runs gauge\n",
        );
        let _ = writeln!(out, "hgpt_runs{{state=\"queued\"}} {}", gauges.queued);
        let _ = writeln!(out, "hgpt_runs{{state=\"running\"}} {}", gauges.running);
        out.push_str(
            "# HELP hgpt_runs_stored Runs in the run store, by state.\n# TYPE hgpt_runs_stored gauge\n",
        );
        for (state, count) in &gauges.stored {
            let _ = writeln!(out, "hgpt_runs_stored{{state=\"{state}\"}} {count}");
        }
        out.push_str(
            "# HELP hgpt_runs_finished_total Runs ended since the server started, by final state.\n\
             # TYPE hgpt_runs_finished_total counter\n",
        );
        if let Ok(finished) = self.finished.lock() {
            for (state, count) in finished.iter() {
                let _ = writeln!(out, "hgpt_runs_finished_total{{state=\"{state}\"}} {count}");
            }
        }
        out.push_str(
            "# HELP hgpt_runs_rejected_total Runs refused with 429 because the queue was full.\n\
             # TYPE hgpt_runs_rejected_total counter\n",
        );
        let _ = writeln!(
            out,
            "hgpt_runs_rejected_total {}",
            self.rejected.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP hgpt_stage_duration_seconds Time spent in each stage of finished runs.\n\
             # TYPE hgpt_stage_duration_seconds histogram\n",
        );
        for (stage, histogram) in STAGES.iter().zip(&self.stages) {
            histogram.render(
                &mut out,
                "hgpt_stage_duration_seconds",
                &format!("stage=\"{stage}\""),
            );
        }
        out.push_str(
            "# HELP hgpt_task_failures_total Failed tasks, by the endpoint that ran them.\n\
             # TYPE hgpt_task_failures_total counter\n",
        );
        if let Ok(failures) = self.task_failures.lock() {
            for (endpoint, count) in failures.iter() {
                let endpoint = endpoint.replace(['\\', '"', '\n'], "_");
                let _ = writeln!(
                    out,
                    "hgpt_task_failures_total{{endpoint=\"{endpoint}\"}} {count}"
                );
            }
        }
        out.push_str(
            "# HELP hgpt_store_write_failures_total Run store writes that failed.\n\
             # TYPE hgpt_store_write_failures_total counter\n",
        );
        let _ = writeln!(
            out,
            "hgpt_store_write_failures_total {}",
            gauges.store_failures
        );
        out.push_str(
            "# HELP hgpt_llm_failures_total Runs whose controller LLM call failed.\n\
             # TYPE hgpt_llm_failures_total counter\n",
        );
        let _ = writeln!(
            out,
            "hgpt_llm_failures_total {}",
            self.llm_failures.load(Ordering::Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let histogram = Histogram::default();
        for ms in [3, 40, 40, 60_000] {
            histogram.observe_ms(ms);
        }
        let mut out = String::new();
        histogram.render(&mut out, "h", "stage=\"plan\"");
        assert!(
            out.contains("h_bucket{stage=\"plan\",le=\"0.005\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("h_bucket{stage=\"plan\",le=\"0.05\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("h_bucket{stage=\"plan\",le=\"30\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("h_bucket{stage=\"plan\",le=\"+Inf\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("h_sum{stage=\"plan\"} 60.083\n"), "{out}");
        assert!(out.contains("h_count{stage=\"plan\"} 4\n"), "{out}");
    }

    #[test]
    fn counters_and_gauges_render() {
        let metrics = Metrics::default();
        metrics.run_finished("succeeded");
        metrics.run_finished("succeeded");
        metrics.run_finished("failed");
        metrics.run_rejected();
        metrics.task_failed("huggingface");
        let out = metrics.render(&Gauges {
            queued: 2,
            running: 1,
            stored: vec![("succeeded".into(), 7)],
            store_failures: 3,
        });
        for line in [
            "hgpt_runs{state=\"queued\"} 2",
            "hgpt_runs{state=\"running\"} 1",
            "hgpt_runs_stored{state=\"succeeded\"} 7",
            "hgpt_runs_finished_total{state=\"succeeded\"} 2",
            "hgpt_runs_finished_total{state=\"failed\"} 1",
            "hgpt_runs_rejected_total 1",
            "hgpt_task_failures_total{endpoint=\"huggingface\"} 1",
            "hgpt_llm_failures_total 0",
            "hgpt_store_write_failures_total 3",
        ] {
            assert!(out.lines().any(|l| l == line), "missing {line}:\n{out}");
        }
        assert_eq!(metrics.mean_run_seconds(), None);
    }
}
