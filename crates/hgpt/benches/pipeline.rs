//! Orchestration benchmarks (`cargo bench -p hgpt`).
//!
//! 1. Overhead: plans of 12 and 48 tasks in four levels against zero-latency
//!    in-process fakes; time from the plan being ready to the last task
//!    finished (all of it is hgpt's own scheduling, resolution and
//!    bookkeeping, since the fakes answer at once), and the whole run.
//! 2. End to end: the real HTTP clients against loopback fake servers with
//!    fixed latencies, compared with the lower bound
//!    plan + one selection + critical path + answer, and with what the
//!    reference's design would take (one selection per step along the chain,
//!    0.5 s polling).
//! 3. Hosted end to end: the same through the router, a cold run (provider
//!    mappings read from the Hub API, all candidates at once) and warm runs
//!    (from the cache: no Hub call).

use hgpt_core::catalog::Catalog;
use hgpt_core::pipeline::{Pipeline, PipelineConfig};
use hgpt_core::plan_stream::{PlanReader, StreamingPlan};
use hgpt_core::prompt::Prompts;
use hgpt_core::record::{RunEvent, TaskStatus};
use hgpt_core::task::TaskKind;
use hgpt_hf::{HfBackend, HfConfig, RouterBackend, RouterConfig};
use hgpt_llm::{OpenAiClient, OpenAiConfig};
use hgpt_media::{LocalMedia, MediaConfig};
use hgpt_testkit::hf::{FakeHf, HfReply, canned_reply, sample_png};
use hgpt_testkit::inproc::{FakeBackend, MemoryMedia, ScriptedLlm};
use hgpt_testkit::openai::{FakeLlm, LlmReply, pieces_of};
use hgpt_testkit::router::{FakeRouter, model_info};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Two candidates per task type used, so selection asks the LLM.
fn catalog() -> Catalog {
    let mut lines = String::new();
    for task in [
        "image-to-text",
        "object-detection",
        "image-classification",
        "text-to-speech",
        "automatic-speech-recognition",
        "text-to-image",
    ] {
        for n in 0..2 {
            lines.push_str(&format!(
                "{{\"id\": \"{task}/m{n}\", \"task\": \"{task}\", \"downloads\": {}, \"description\": \"model {n}\"}}\n",
                10 - n
            ));
        }
    }
    Catalog::from_jsonl(&lines, "bench").unwrap_or_default()
}

/// `width` independent branches, each a 4-level chain:
/// text-to-image -> image-to-text -> text-to-speech -> speech recognition.
fn layered_plan(width: usize) -> String {
    let mut tasks = Vec::new();
    for b in 0..width {
        let base = b * 4;
        tasks.push(format!(
            r#"{{"task": "text-to-image", "id": {base}, "dep": [-1], "args": {{"text": "picture {b}"}}}}"#
        ));
        tasks.push(format!(
            r#"{{"task": "image-to-text", "id": {}, "dep": [{base}], "args": {{"image": "<GENERATED>-{base}"}}}}"#,
            base + 1
        ));
        tasks.push(format!(
            r#"{{"task": "text-to-speech", "id": {}, "dep": [{}], "args": {{"text": "<GENERATED>-{}"}}}}"#,
            base + 2,
            base + 1,
            base + 1
        ));
        tasks.push(format!(
            r#"{{"task": "automatic-speech-recognition", "id": {}, "dep": [{}], "args": {{"audio": "<GENERATED>-{}"}}}}"#,
            base + 3,
            base + 2,
            base + 2
        ));
    }
    format!("[{}]", tasks.join(","))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn micros(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

async fn overhead(width: usize, iterations: usize) {
    let plan = layered_plan(width);
    let tasks = width * 4;
    let llm = Arc::new(ScriptedLlm::with_plan(plan));
    let backend = Arc::new(FakeBackend::new(Duration::ZERO));
    let pipeline = Pipeline::new(
        llm,
        backend,
        Arc::new(MemoryMedia::default()),
        Arc::new(catalog()),
        Arc::new(Prompts::default()),
        PipelineConfig {
            max_concurrency: 64,
            // Timed from the plan being ready: the whole plan at once.
            stream_plan: false,
            ..PipelineConfig::default()
        },
    );
    let mut execution = Vec::with_capacity(iterations);
    let mut whole = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let (sink, mut events) = mpsc::unbounded_channel();
        // The execution window is timed by a reader running alongside the run.
        let reader = tokio::spawn(async move {
            let (mut planned, mut finished) = (None, None);
            while let Some(event) = events.recv().await {
                match event {
                    RunEvent::Planned { .. } => planned = Some(Instant::now()),
                    RunEvent::TaskFinished { .. } => finished = Some(Instant::now()),
                    _ => {}
                }
            }
            planned.zip(finished).map(|(p, f)| f.duration_since(p))
        });
        let started = Instant::now();
        let record = pipeline.run("bench", &[], Some(sink)).await;
        whole.push(started.elapsed());
        let ok = record
            .as_ref()
            .is_ok_and(|r| r.tasks.iter().all(|t| t.status == TaskStatus::Ok));
        assert!(ok, "the benchmark plan must run cleanly: {record:?}");
        if let Ok(Some(window)) = reader.await {
            execution.push(window);
        }
    }
    whole.sort();
    execution.sort();
    println!(
        "overhead  {tasks:>3} tasks (4 levels): plan->last task p50 {} p90 {} ({} per task) | whole run p50 {} p90 {}",
        micros(percentile(&execution, 0.5)),
        micros(percentile(&execution, 0.9)),
        micros(percentile(&execution, 0.5) / tasks as u32),
        micros(percentile(&whole, 0.5)),
        micros(percentile(&whole, 0.9)),
    );
}

/// A controller that plans three 4-task chains, picks the first candidate
/// and answers "done", each call after `llm_latency`.
async fn controller(llm_latency: Duration) -> FakeLlm {
    let plan = layered_plan(3);
    FakeLlm::from_fn(move |call| {
        let system = call.system();
        let text = if system.starts_with("#1") {
            plan.clone()
        } else if system.starts_with("#2") {
            format!(
                "{{\"id\": \"{}\", \"reason\": \"first\"}}",
                call.first_candidate()
            )
        } else {
            "done".to_string()
        };
        LlmReply::text(text).with_delay(llm_latency)
    })
    .await
}

async fn end_to_end(llm_latency: Duration, task_latency: Duration, runs: usize) {
    let controller = controller(llm_latency).await;
    let inference = FakeHf::start(Arc::new(move |call: &hgpt_testkit::hf::HfCall| {
        if call.is_status {
            return HfReply::status_loaded(true);
        }
        let task = call
            .model
            .split('/')
            .next()
            .and_then(TaskKind::parse)
            .unwrap_or(TaskKind::ImageToText);
        canned_reply(task).with_delay(task_latency)
    }))
    .await;
    let dir = std::env::temp_dir().join(format!("hgpt-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("a.png"), sample_png());
    let llm = OpenAiClient::new(OpenAiConfig {
        base_url: controller.url(),
        model: "fake-model".into(),
        ..OpenAiConfig::default()
    });
    let backend = HfBackend::new(HfConfig::with_base_url(inference.url()));
    let media = LocalMedia::new(MediaConfig {
        media_root: dir.clone(),
        out_dir: dir.join("out"),
        ..MediaConfig::default()
    });
    let (Ok(llm), Ok(backend), Ok(media)) = (llm, backend, media) else {
        eprintln!("cannot set up the end-to-end benchmark");
        return;
    };
    let (llm, backend, media) = (Arc::new(llm), Arc::new(backend), Arc::new(media));
    let pipeline = |stream_plan| {
        Pipeline::new(
            llm.clone(),
            backend.clone(),
            media.clone(),
            Arc::new(catalog()),
            Arc::new(Prompts::default()),
            PipelineConfig {
                stream_plan,
                ..PipelineConfig::default()
            },
        )
    };
    let pipelines = [(false, pipeline(false)), (true, pipeline(true))];
    // The two paths take turns, so both see the same machine.
    let mut walls: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (index, (_, pipeline)) in pipelines.iter().enumerate() {
            let started = Instant::now();
            let record = pipeline.run("bench", &[], None).await;
            walls[index].push(started.elapsed());
            let ok = record
                .as_ref()
                .is_ok_and(|r| r.tasks.iter().all(|t| t.status == TaskStatus::Ok));
            assert!(ok, "{record:?}");
        }
    }
    let chain = 4u32;
    let lower = llm_latency * 3 + task_latency * chain;
    let reference =
        llm_latency * 2 + (llm_latency + task_latency) * chain + Duration::from_millis(250) * chain;
    for ((stream_plan, _), walls) in pipelines.iter().zip(&mut walls) {
        walls.sort();
        let p50 = percentile(walls, 0.5);
        println!(
            "end to end ({}): 12 tasks, chain of {chain}, LLM {} ms/call, model {} ms/call: p50 {:.0} ms (max {:.0} ms); \
             lower bound {:.0} ms (+{:.1}%); reference design ~{:.0} ms",
            if *stream_plan {
                "plan streamed"
            } else {
                "whole plan"
            },
            llm_latency.as_millis(),
            task_latency.as_millis(),
            p50.as_secs_f64() * 1e3,
            percentile(walls, 1.0).as_secs_f64() * 1e3,
            lower.as_secs_f64() * 1e3,
            (p50.as_secs_f64() / lower.as_secs_f64() - 1.0) * 100.0,
            reference.as_secs_f64() * 1e3,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Six tasks whose long chain comes first: a 4-task chain
/// (text-to-image -> image-to-text -> text-to-speech -> speech recognition),
/// then two independent image tasks.
fn chain_first_plan() -> String {
    let mut plan = layered_plan(1);
    plan.pop();
    plan.push_str(
        r#",{"task": "object-detection", "id": 4, "dep": [-1], "args": {"image": "/a.png"}},{"task": "image-classification", "id": 5, "dep": [-1], "args": {"image": "/a.png"}}]"#,
    );
    plan
}

/// Characters per streamed token (about what a BPE tokenizer makes of JSON).
const TOKEN_CHARS: usize = 4;

/// When each task of `plan` becomes certain, as the controller streams it
/// one token every `gap` after the role chunk (the fake server's pieces),
/// and when the plan ends.
fn certain_times(
    plan: &str,
    gap: Duration,
) -> (Vec<(hgpt_core::plan::PlanTask, Duration)>, Duration) {
    let mut reader = PlanReader::new();
    let mut streaming = StreamingPlan::new();
    let mut times = Vec::new();
    let pieces = pieces_of(plan, TOKEN_CHARS);
    for (index, piece) in pieces.iter().enumerate() {
        let at = gap * (index as u32 + 2);
        for item in reader.push(piece) {
            times.extend(streaming.push(&item).into_iter().map(|task| (task, at)));
        }
    }
    (times, gap * (pieces.len() as u32 + 2))
}

/// A controller that writes its plan at a fixed token rate: the streamed
/// plan against the whole plan, and against the streaming floor (each task
/// from the moment its object is complete, plus its selection and its
/// chain of runs; the latest of these, plus the answer).
async fn streamed_plan(llm_latency: Duration, task_latency: Duration, gap: Duration, runs: usize) {
    let plan = chain_first_plan();
    let plan_text = plan.clone();
    let (_, plan_time) = certain_times(&plan, gap);
    let controller = FakeLlm::from_fn(move |call| {
        let system = call.system();
        if system.starts_with("#1") {
            let reply = LlmReply::text(plan_text.clone());
            // Written at the same rate whether it streams or not.
            if call.stream {
                reply.with_pieces_of(TOKEN_CHARS).with_chunk_delay(gap)
            } else {
                reply.with_delay(plan_time)
            }
        } else if system.starts_with("#2") {
            LlmReply::text(format!(
                "{{\"id\": \"{}\", \"reason\": \"first\"}}",
                call.first_candidate()
            ))
            .with_delay(llm_latency)
        } else {
            LlmReply::text("done").with_delay(llm_latency)
        }
    })
    .await;
    let backend = Arc::new(FakeBackend::new(task_latency));
    let mut results = Vec::new();
    for stream_plan in [false, true] {
        let Ok(llm) = OpenAiClient::new(OpenAiConfig {
            base_url: controller.url(),
            model: "fake-model".into(),
            ..OpenAiConfig::default()
        }) else {
            eprintln!("cannot set up the streamed-plan benchmark");
            return;
        };
        let media = Arc::new(MemoryMedia::with_files([(
            "/a.png".to_string(),
            sample_png(),
        )]));
        let pipeline = Pipeline::new(
            Arc::new(llm),
            backend.clone(),
            media,
            Arc::new(catalog()),
            Arc::new(Prompts::default()),
            PipelineConfig {
                stream_plan,
                ..PipelineConfig::default()
            },
        );
        let mut walls = Vec::new();
        for _ in 0..runs {
            let started = Instant::now();
            let record = pipeline.run("bench", &[], None).await;
            walls.push(started.elapsed());
            let ok = record.as_ref().is_ok_and(|r| {
                r.tasks.len() == 6 && r.tasks.iter().all(|t| t.status == TaskStatus::Ok)
            });
            assert!(ok, "{record:?}");
        }
        walls.sort();
        results.push(percentile(&walls, 0.5));
    }
    // The floor: tasks from when they are certain; a task starts once its
    // selection is done and its dependencies have finished.
    let (certain, plan_end) = certain_times(&plan, gap);
    let mut finished: std::collections::BTreeMap<usize, Duration> = Default::default();
    for (task, at) in &certain {
        let ready = task
            .dep
            .iter()
            .filter_map(|d| finished.get(d))
            .fold(*at + llm_latency, |a, b| a.max(*b));
        finished.insert(task.id, ready + task_latency);
    }
    let floor = finished.values().fold(plan_end, |a, b| a.max(*b)) + llm_latency;
    let whole_bound = plan_end + llm_latency + task_latency * 4 + llm_latency;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (whole, streamed) = (results[0], results[1]);
    println!(
        "streamed plan: 6 tasks, chain of 4 first, plan at {:.0} tokens/s ({:.0} ms), LLM {} ms/call, model {} ms/call: \
         whole plan p50 {:.0} ms (bound {:.0} ms); streamed p50 {:.0} ms, floor {:.0} ms (+{:.1}%), {:.2}x the whole-plan bound",
        1.0 / gap.as_secs_f64(),
        ms(plan_end),
        llm_latency.as_millis(),
        task_latency.as_millis(),
        ms(whole),
        ms(whole_bound),
        ms(streamed),
        ms(floor),
        (streamed.as_secs_f64() / floor.as_secs_f64() - 1.0) * 100.0,
        streamed.as_secs_f64() / whole_bound.as_secs_f64(),
    );
}

/// The same run through hosted inference (the fake Hub API and router):
/// the first run reads each candidate's provider mapping from the Hub (all
/// candidates of a run at once), later runs from the cache.
async fn hosted_end_to_end(
    llm_latency: Duration,
    task_latency: Duration,
    hub_latency: Duration,
    runs: usize,
) {
    let controller = controller(llm_latency).await;
    let models = catalog()
        .entries()
        .iter()
        .map(|e| {
            let info = model_info(&e.task, &[("hf-inference", &e.id, &e.task, "live")]);
            (e.id.clone(), info)
        })
        .collect();
    let router = FakeRouter::start(models, Default::default(), Default::default()).await;
    router.set_delays(hub_latency, task_latency);
    let dir = std::env::temp_dir().join(format!("hgpt-bench-hosted-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let llm = OpenAiClient::new(OpenAiConfig {
        base_url: controller.url(),
        model: "fake-model".into(),
        ..OpenAiConfig::default()
    });
    let media = LocalMedia::new(MediaConfig {
        media_root: dir.clone(),
        out_dir: dir.join("out"),
        allow_private_urls: true,
        ..MediaConfig::default()
    });
    let (Ok(llm), Ok(media)) = (llm, media) else {
        eprintln!("cannot set up the hosted benchmark");
        return;
    };
    let media = Arc::new(media);
    let backend = RouterBackend::new(
        HfConfig {
            token: Some("hf_bench".into()),
            ..HfConfig::default()
        },
        RouterConfig {
            router_url: router.url().to_string(),
            hub_endpoint: router.url().to_string(),
            ..RouterConfig::default()
        },
        media.clone(),
    );
    let Ok(backend) = backend else {
        eprintln!("cannot set up the hosted benchmark");
        return;
    };
    let pipeline = Pipeline::new(
        Arc::new(llm),
        Arc::new(backend),
        media,
        Arc::new(catalog()),
        Arc::new(Prompts::default()),
        PipelineConfig::default(),
    );
    let mut walls = Vec::new();
    let mut hub_calls = Vec::new();
    for _ in 0..runs.max(2) {
        let before = router.hub_calls().len();
        let started = Instant::now();
        let record = pipeline.run("bench", &[], None).await;
        walls.push(started.elapsed());
        hub_calls.push(router.hub_calls().len() - before);
        let ok = record
            .as_ref()
            .is_ok_and(|r| r.tasks.iter().all(|t| t.status == TaskStatus::Ok));
        assert!(ok, "{record:?}");
    }
    let cold = walls[0];
    let mut warm = walls[1..].to_vec();
    warm.sort();
    let lower = llm_latency * 3 + task_latency * 4;
    let warm_p50 = percentile(&warm, 0.5);
    println!(
        "hosted end to end (router, Hub API {} ms/call): cold run {:.0} ms with {} Hub calls; \
         warm runs p50 {:.0} ms with {} Hub calls; lower bound {:.0} ms (warm +{:.1}%)",
        hub_latency.as_millis(),
        cold.as_secs_f64() * 1e3,
        hub_calls[0],
        warm_p50.as_secs_f64() * 1e3,
        hub_calls[1..].iter().sum::<usize>(),
        lower.as_secs_f64() * 1e3,
        (warm_p50.as_secs_f64() / lower.as_secs_f64() - 1.0) * 100.0,
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    // `cargo test --benches` runs this once with --bench absent: keep it short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        eprintln!("cannot start a runtime");
        return;
    };
    runtime.block_on(async {
        let iterations = if quick { 3 } else { 300 };
        overhead(3, iterations).await;
        overhead(12, iterations).await;
        let runs = if quick { 1 } else { 5 };
        // The whole and streamed plans alternate, 9 runs each.
        let paired = if quick { 1 } else { 9 };
        end_to_end(
            Duration::from_millis(100),
            Duration::from_millis(200),
            paired,
        )
        .await;
        streamed_plan(
            Duration::from_millis(100),
            Duration::from_millis(1000),
            Duration::from_secs_f64(1.0 / 30.0),
            if quick { 1 } else { 3 },
        )
        .await;
        hosted_end_to_end(
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_millis(150),
            runs + 1,
        )
        .await;
    });
}
