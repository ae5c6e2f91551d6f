//! Parity of the text pipelines with the transformers pipelines on the tiny
//! random checkpoints in `tests/fixtures` (made by `scripts/make_fixtures.py`
//! with transformers 4.57.6): token ids, raw logits within 1e-4 and the
//! post-processed outputs.

use candle_core::Device;
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{Answer, Entity, InferenceOutput, ScoredLabel};
use hgpt_core::task::TaskKind;
use hgpt_local::pipeline::{self, Pipeline};
use hgpt_local::text::{Family, Logits, QaOptions, TextPipeline};
use hgpt_local::{LocalError, ModelFiles};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

const TOLERANCE: f64 = 1e-4;

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn files(name: &str) -> ModelFiles {
    ModelFiles::from_dir(&format!("fixtures/{name}"), fixture_dir(name))
}

fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture_dir(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(name: &str, task: TaskKind) -> TextPipeline {
    TextPipeline::load(task, &files(name), &Device::Cpu).unwrap()
}

fn u32s(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

fn f32s(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn offsets(value: &Value) -> Vec<(usize, usize)> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_u64().unwrap() as usize,
                p[1].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

fn assert_close(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!(
            f64::from((a - e).abs()) <= TOLERANCE,
            "{what}[{i}]: {a} vs {e}"
        );
    }
}

fn assert_score(actual: f64, expected: &Value, what: &str) {
    let expected = expected.as_f64().unwrap();
    assert!(
        (actual - expected).abs() <= TOLERANCE,
        "{what}: score {actual} vs {expected}"
    );
}

fn assert_labels(actual: &[ScoredLabel], expected: &Value, what: &str) {
    let expected = expected.as_array().unwrap();
    assert_eq!(actual.len(), expected.len(), "{what}: {actual:?}");
    for (a, e) in actual.iter().zip(expected) {
        assert_eq!(a.label, e["label"].as_str().unwrap(), "{what}: {actual:?}");
        assert_score(a.score, &e["score"], what);
    }
}

fn assert_entities(actual: &[Entity], expected: &Value, what: &str) {
    let expected = expected.as_array().unwrap();
    let summary = |e: &Entity| (e.entity_group.clone(), e.word.clone(), e.start, e.end);
    let wanted: Vec<_> = expected
        .iter()
        .map(|e| {
            (
                e["entity_group"].as_str().unwrap().to_string(),
                e["word"].as_str().unwrap().to_string(),
                e["start"].as_u64().map(|n| n as usize),
                e["end"].as_u64().map(|n| n as usize),
            )
        })
        .collect();
    assert_eq!(
        actual.iter().map(summary).collect::<Vec<_>>(),
        wanted,
        "{what}"
    );
    for (a, e) in actual.iter().zip(expected) {
        assert_score(a.score, &e["score"], what);
    }
}

fn assert_answers(actual: &[Answer], expected: &[Value], what: &str) {
    let summary = |a: &Answer| (a.answer.clone(), a.start, a.end);
    let wanted: Vec<_> = expected
        .iter()
        .map(|e| {
            (
                e["answer"].as_str().unwrap().to_string(),
                e["start"].as_u64().map(|n| n as usize),
                e["end"].as_u64().map(|n| n as usize),
            )
        })
        .collect();
    assert_eq!(
        actual.iter().map(summary).collect::<Vec<_>>(),
        wanted,
        "{what}"
    );
    for (a, e) in actual.iter().zip(expected) {
        assert_score(a.score, &e["score"], what);
    }
}

fn args(text: Option<&str>, other: Value) -> ResolvedArgs {
    ResolvedArgs {
        text: text.map(str::to_string),
        other: serde_json::from_value(other).unwrap(),
        ..ResolvedArgs::default()
    }
}

const FAMILIES: [(&str, Family); 3] = [
    ("bert", Family::Bert),
    ("distilbert", Family::DistilBert),
    ("roberta", Family::Roberta),
];

fn check_tokens(model: &TextPipeline, text: &str, case: &Value, what: &str) {
    let encoding = model.encode(text).unwrap();
    assert_eq!(encoding.get_ids(), u32s(&case["input_ids"]), "{what}: ids");
    assert_eq!(
        encoding.get_offsets(),
        offsets(&case["offsets"]),
        "{what}: offsets"
    );
    if let Some(types) = case.get("token_type_ids") {
        assert_eq!(encoding.get_type_ids(), u32s(types), "{what}: type ids");
    }
}

#[test]
fn text_classification_matches_transformers() {
    for (family_name, family) in FAMILIES {
        let name = format!("{family_name}-seqcls");
        let model = load(&name, TaskKind::TextClassification);
        assert_eq!(model.family(), family);
        assert_eq!(model.labels(), ["negative", "neutral", "positive"]);
        let fixture = expected(&name);
        for (i, case) in fixture["cases"].as_array().unwrap().iter().enumerate() {
            let what = format!("{name} case {i}");
            let text = case["text"].as_str().unwrap();
            check_tokens(&model, text, case, &what);
            let Logits::Sequence(logits) = model.logits(&model.encode(text).unwrap()).unwrap()
            else {
                panic!("{what}: not sequence logits");
            };
            assert_close(&logits, &f32s(&case["logits"]), &what);

            let all = model.classify(text, None, None).unwrap();
            assert_labels(&all, &case["pipeline_top_k_none"], &what);
            let best = model.classify(text, Some(1), None).unwrap();
            assert_labels(&best, &case["pipeline"], &what);

            // Through the Pipeline trait: all labels by default, top_k limits.
            let out = model.run(TaskKind::TextClassification, &args(Some(text), json!({})));
            assert_eq!(out, Ok(InferenceOutput::Labels(all.clone())), "{what}");
            let out = model.run(
                TaskKind::TextClassification,
                &args(Some(text), json!({"top_k": 2})),
            );
            assert_eq!(
                out,
                Ok(InferenceOutput::Labels(all[..2].to_vec())),
                "{what}"
            );
        }
    }
}

#[test]
fn token_classification_matches_transformers() {
    for (family_name, family) in FAMILIES {
        let name = format!("{family_name}-tokcls");
        let model = load(&name, TaskKind::TokenClassification);
        assert_eq!(model.family(), family);
        let fixture = expected(&name);
        for (i, case) in fixture["cases"].as_array().unwrap().iter().enumerate() {
            let what = format!("{name} case {i}");
            let text = case["text"].as_str().unwrap();
            check_tokens(&model, text, case, &what);
            let Logits::Tokens(rows) = model.logits(&model.encode(text).unwrap()).unwrap() else {
                panic!("{what}: not token logits");
            };
            let wanted = case["logits"].as_array().unwrap();
            assert_eq!(rows.len(), wanted.len(), "{what}");
            for (t, (row, want)) in rows.iter().zip(wanted).enumerate() {
                assert_close(row, &f32s(want), &format!("{what} token {t}"));
            }

            let entities = model.entities(text, &["O".to_string()]).unwrap();
            assert_entities(&entities, &case["pipeline"], &what);
            let out = model
                .run(TaskKind::TokenClassification, &args(Some(text), json!({})))
                .unwrap();
            assert_eq!(out, InferenceOutput::Entities(entities), "{what}");
        }
    }
}

#[test]
fn question_answering_matches_transformers() {
    for (family_name, family) in FAMILIES {
        let name = format!("{family_name}-qa");
        let model = load(&name, TaskKind::QuestionAnswering);
        assert_eq!(model.family(), family);
        let fixture = expected(&name);
        for (i, case) in fixture["cases"].as_array().unwrap().iter().enumerate() {
            let what = format!("{name} case {i}");
            let question = case["question"].as_str().unwrap();
            let context = case["context"].as_str().unwrap();
            let windows = model
                .encode_pair(question, context, &QaOptions::default())
                .unwrap();
            assert_eq!(windows.len(), 1, "{what}");
            let window = &windows[0];
            assert_eq!(window.get_ids(), u32s(&case["input_ids"]), "{what}: ids");
            assert_eq!(
                window.get_offsets(),
                offsets(&case["offsets"]),
                "{what}: offsets"
            );
            let sequence_ids: Vec<Option<usize>> = case["sequence_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().map(|n| n as usize))
                .collect();
            assert_eq!(window.get_sequence_ids(), sequence_ids, "{what}");
            if let Some(types) = case.get("token_type_ids") {
                assert_eq!(window.get_type_ids(), u32s(types), "{what}: type ids");
            }
            let Logits::Spans { start, end } = model.logits(window).unwrap() else {
                panic!("{what}: not span logits");
            };
            assert_close(
                &start,
                &f32s(&case["start_logits"]),
                &format!("{what} start"),
            );
            assert_close(&end, &f32s(&case["end_logits"]), &format!("{what} end"));

            let best = model
                .answer(question, context, &QaOptions::default())
                .unwrap();
            assert_answers(&best, std::slice::from_ref(&case["pipeline"]), &what);
            let top3 = QaOptions {
                top_k: 3,
                ..QaOptions::default()
            };
            let three = model.answer(question, context, &top3).unwrap();
            assert_answers(
                &three,
                case["pipeline_top_k_3"].as_array().unwrap(),
                &format!("{what} top 3"),
            );

            let out = model
                .run(
                    TaskKind::QuestionAnswering,
                    &args(None, json!({"question": question, "context": context})),
                )
                .unwrap();
            assert_eq!(out, InferenceOutput::Answers(best.clone()), "{what}");
            // The question may also come as the text.
            let out = model
                .run(
                    TaskKind::QuestionAnswering,
                    &args(Some(question), json!({"context": context, "top_k": "3"})),
                )
                .unwrap();
            assert_eq!(out, InferenceOutput::Answers(three), "{what}");
        }
    }
}

/// A context several windows long: every window fits the model, consecutive
/// windows overlap by the stride, and answers point into the context.
#[test]
fn long_contexts_are_read_in_overlapping_windows() {
    let model = load("bert-qa", TaskKind::QuestionAnswering);
    let question = "Where does John live?";
    let sentence = "John Smith lives in Paris with his sister Mary. He buys bread at the old bakery near the river. ";
    let context = sentence.repeat(12);
    let options = QaOptions {
        top_k: 5,
        ..QaOptions::default()
    };
    let windows = model.encode_pair(question, &context, &options).unwrap();
    assert!(windows.len() > 2, "{} windows", windows.len());
    let context_tokens = |w: &tokenizers::Encoding| -> Vec<(usize, usize)> {
        w.get_sequence_ids()
            .iter()
            .zip(w.get_offsets())
            .filter(|(s, _)| **s == Some(1))
            .map(|(_, o)| *o)
            .collect()
    };
    for pair in windows.windows(2) {
        assert!(pair[0].len() <= 128);
        let (a, b) = (context_tokens(&pair[0]), context_tokens(&pair[1]));
        // The default stride for a 128-token model is 64 tokens of overlap.
        assert_eq!(a[a.len() - 64..], b[..64]);
    }
    let answers = model.answer(question, &context, &options).unwrap();
    assert_eq!(answers.len(), 5);
    for answer in &answers {
        let (start, end) = (answer.start.unwrap(), answer.end.unwrap());
        let text: String = context.chars().skip(start).take(end - start).collect();
        assert_eq!(answer.answer, text);
        assert!(answer.score > 0.0);
    }
    assert!(answers.windows(2).all(|w| w[0].score >= w[1].score));
    // Answers that differ only in case are merged, so no two are equal.
    for (i, a) in answers.iter().enumerate() {
        for b in &answers[i + 1..] {
            assert_ne!(a.answer.to_lowercase(), b.answer.to_lowercase());
        }
    }
    // A smaller window and stride are honoured.
    let small = QaOptions {
        max_seq_len: Some(48),
        doc_stride: Some(16),
        ..QaOptions::default()
    };
    let windows = model.encode_pair(question, &context, &small).unwrap();
    assert!(windows.iter().all(|w| w.len() <= 48));
    let (a, b) = (context_tokens(&windows[0]), context_tokens(&windows[1]));
    assert_eq!(a[a.len() - 16..], b[..16]);
}

#[test]
fn long_texts_are_truncated_to_the_model() {
    let model = load("roberta-seqcls", TaskKind::TextClassification);
    let text = "It is an ordinary day in Berlin. ".repeat(40);
    let encoding = model.encode(&text).unwrap();
    assert_eq!(encoding.len(), 128);
    assert_eq!(model.max_tokens(), 128);
    assert_eq!(model.classify(&text, None, None).unwrap().len(), 3);
}

#[test]
fn the_pipeline_seam_dispatches_text_tasks() {
    for (name, task) in [
        ("bert-seqcls", TaskKind::TextClassification),
        ("distilbert-tokcls", TaskKind::TokenClassification),
        ("roberta-qa", TaskKind::QuestionAnswering),
    ] {
        assert!(pipeline::supports(task));
        let loaded = pipeline::load(task, &files(name), &Device::Cpu).unwrap();
        assert_eq!(loaded.tasks(), [task]);
        let size = std::fs::metadata(fixture_dir(name).join("model.safetensors"))
            .unwrap()
            .len();
        assert_eq!(loaded.weight_bytes(), size);
    }
}

fn bad_input_message(result: Result<InferenceOutput, LocalError>) -> String {
    match result {
        Err(LocalError::BadInput { message, .. }) => message,
        other => panic!("expected bad input, got {other:?}"),
    }
}

#[test]
fn bad_input_is_reported() {
    let classifier = load("bert-seqcls", TaskKind::TextClassification);
    let task = TaskKind::TextClassification;
    for text in [None, Some(""), Some("   ")] {
        let message = bad_input_message(classifier.run(task, &args(text, json!({}))));
        assert!(message.contains("empty"), "{message}");
    }
    let message = bad_input_message(classifier.run(task, &args(Some("hi"), json!({"top_k": 0}))));
    assert!(message.contains("top_k"), "{message}");
    let message = bad_input_message(classifier.run(
        task,
        &args(Some("hi"), json!({"function_to_apply": "cube"})),
    ));
    assert!(message.contains("function_to_apply"), "{message}");
    // A model serves only the task it was loaded for.
    assert!(matches!(
        classifier.run(TaskKind::QuestionAnswering, &args(Some("hi"), json!({}))),
        Err(LocalError::Unsupported(_))
    ));

    let tagger = load("roberta-tokcls", TaskKind::TokenClassification);
    let task = TaskKind::TokenClassification;
    let message = bad_input_message(tagger.run(task, &args(Some(""), json!({}))));
    assert!(message.contains("empty"), "{message}");
    let message = bad_input_message(tagger.run(
        task,
        &args(Some("Anna"), json!({"aggregation_strategy": "max"})),
    ));
    assert!(message.contains("aggregation_strategy"), "{message}");

    let reader = load("distilbert-qa", TaskKind::QuestionAnswering);
    let task = TaskKind::QuestionAnswering;
    let message = bad_input_message(reader.run(task, &args(Some("Where?"), json!({}))));
    assert!(message.contains("\"context\""), "{message}");
    let message =
        bad_input_message(reader.run(task, &args(Some("Where?"), json!({"context": "  "}))));
    assert!(message.contains("\"context\""), "{message}");
    let message = bad_input_message(reader.run(task, &args(None, json!({"context": "Paris."}))));
    assert!(message.contains("\"question\""), "{message}");
    let message = bad_input_message(reader.run(
        task,
        &args(
            Some("Where?"),
            json!({"context": "Paris.", "max_answer_len": -1}),
        ),
    ));
    assert!(message.contains("max_answer_len"), "{message}");
    // A question that leaves no room for the context in a window.
    let long_question = "where does john live ? ".repeat(30);
    let long_context = "John Smith lives in Paris. ".repeat(30);
    let message = bad_input_message(reader.run(
        task,
        &args(Some(&long_question), json!({"context": long_context})),
    ));
    assert!(message.contains("question is too long"), "{message}");
    // Both also work nested in `inputs`, as the wire sends them.
    let out = reader.run(
        task,
        &args(
            None,
            json!({"inputs": {"question": "Who?", "context": "Anna visited Berlin."}}),
        ),
    );
    assert!(matches!(out, Ok(InferenceOutput::Answers(a)) if a.len() == 1));
}

/// A copy of a fixture folder whose config.json is edited by `edit`.
fn edited_copy(name: &str, edit: impl FnOnce(&mut Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture_dir(name)).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let config_path = dir.path().join("config.json");
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&config_path, config.to_string()).unwrap();
    dir
}

fn load_error(dir: &Path, task: TaskKind) -> LocalError {
    let files = ModelFiles::from_dir("org/broken", dir);
    match pipeline::load(task, &files, &Device::Cpu) {
        Ok(_) => panic!("loaded a broken model"),
        Err(e) => e,
    }
}

#[test]
fn broken_or_foreign_models_fail_to_load_with_a_reason() {
    let task = TaskKind::TextClassification;
    // Sizes that do not match the weights.
    let dir = edited_copy("bert-seqcls", |c| c["intermediate_size"] = json!(40));
    let err = load_error(dir.path(), task);
    assert!(
        matches!(&err, LocalError::Load { message, .. } if message.contains("intermediate.dense.weight") && message.contains("shape")),
        "{err}"
    );
    // More labels than the classifier has.
    let dir = edited_copy("distilbert-seqcls", |c| {
        c["id2label"] = json!({"0": "a", "1": "b", "2": "c", "3": "d"})
    });
    let err = load_error(dir.path(), task);
    assert!(
        matches!(&err, LocalError::Load { message, .. } if message.contains("classifier.weight")),
        "{err}"
    );
    // No label names.
    let dir = edited_copy("roberta-seqcls", |c| {
        c.as_object_mut().unwrap().remove("id2label");
    });
    let err = load_error(dir.path(), task);
    assert!(
        matches!(&err, LocalError::Load { message, .. } if message.contains("id2label")),
        "{err}"
    );
    // Weights under names the family does not use.
    let dir = edited_copy("roberta-seqcls", |c| c["model_type"] = json!("bert"));
    let err = load_error(dir.path(), task);
    assert!(
        matches!(&err, LocalError::Load { message, .. } if message.contains("cannot find tensor")),
        "{err}"
    );
    // An architecture hgpt does not run.
    let dir = edited_copy("bert-seqcls", |c| c["model_type"] = json!("gpt2"));
    let err = load_error(dir.path(), task);
    assert!(
        matches!(&err, LocalError::Unsupported(m) if m.contains("gpt2")),
        "{err}"
    );
    // A checkpoint for another task.
    let err = load_error(&fixture_dir("bert-qa"), task);
    assert!(
        matches!(&err, LocalError::Unsupported(m) if m.contains("BertForQuestionAnswering")),
        "{err}"
    );
    // Missing files are named.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture_dir("bert-seqcls").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let err = load_error(dir.path(), task);
    assert!(
        matches!(&err, LocalError::MissingFiles { missing, .. } if missing.contains("model.safetensors") && missing.contains("tokenizer.json")),
        "{err}"
    );
}

#[test]
fn multi_label_models_use_sigmoid() {
    let dir = edited_copy("bert-seqcls", |c| {
        c["problem_type"] = json!("multi_label_classification")
    });
    let files = ModelFiles::from_dir("org/multi", dir.path());
    let model = TextPipeline::load(TaskKind::TextClassification, &files, &Device::Cpu).unwrap();
    let text = "I love this movie, it was wonderful!";
    let Logits::Sequence(logits) = model.logits(&model.encode(text).unwrap()).unwrap() else {
        panic!("not sequence logits");
    };
    let labels = model.classify(text, None, None).unwrap();
    for label in &labels {
        let i = model
            .labels()
            .iter()
            .position(|l| *l == label.label)
            .unwrap();
        let sigmoid = 1.0 / (1.0 + (-f64::from(logits[i])).exp());
        assert!((label.score - sigmoid).abs() < 1e-6);
    }
    // Scores are independent: they do not sum to one.
    let sum: f64 = labels.iter().map(|l| l.score).sum();
    assert!((sum - 1.0).abs() > 1e-3, "{sum}");
}
