//! Request shapes and response decoding per task type, against the fake server.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::*;
use hgpt_core::backend::{InferenceError, ResolvedArgs};
use hgpt_core::output::{InferenceOutput, ScoredLabel};
use hgpt_core::task::TaskKind;
use hgpt_testkit::hf::{HfReply, canned_reply, png_gray, sample_mp4, sample_png, sample_wav};
use serde_json::json;

fn labels(pairs: &[(&str, f64)]) -> Vec<ScoredLabel> {
    pairs
        .iter()
        .map(|(l, s)| ScoredLabel {
            label: (*l).into(),
            score: *s,
        })
        .collect()
}

// ----------------------------------------------------------------- text tasks

#[tokio::test]
async fn text_classification_sends_a_string_and_reads_nested_and_flat_labels() {
    let (out, call) = run_ok(
        TaskKind::TextClassification,
        text("I love it"),
        canned_reply(TaskKind::TextClassification),
    )
    .await;
    let body = assert_json_call(&call, None);
    assert_eq!(body, json!({"inputs": "I love it"}));
    assert_eq!(
        out,
        InferenceOutput::Labels(labels(&[("POSITIVE", 0.9998), ("NEGATIVE", 0.0002)]))
    );

    let flat = HfReply::json(json!([{"label": "NEG", "score": 0.75}]));
    let out = decode(TaskKind::TextClassification, text("meh"), flat).await;
    assert_eq!(out, InferenceOutput::Labels(labels(&[("NEG", 0.75)])));
}

#[tokio::test]
async fn token_classification_reads_entity_groups_and_the_legacy_entity_key() {
    let (out, call) = run_ok(
        TaskKind::TokenClassification,
        text("My name is Sarah and I live in London"),
        canned_reply(TaskKind::TokenClassification),
    )
    .await;
    assert_eq!(
        assert_json_call(&call, None),
        json!({"inputs": "My name is Sarah and I live in London"})
    );
    let InferenceOutput::Entities(entities) = out else {
        panic!("{out:?}")
    };
    assert_eq!(entities.len(), 2);
    assert_eq!(entities[0].entity_group, "PER");
    assert_eq!(entities[0].word, "Sarah");
    assert_eq!(entities[0].start, Some(11));

    let legacy = HfReply::json(json!([{"entity": "B-LOC", "score": 0.9, "word": "Paris"}]));
    let InferenceOutput::Entities(entities) =
        decode(TaskKind::TokenClassification, text("Paris"), legacy).await
    else {
        panic!()
    };
    assert_eq!(entities[0].entity_group, "B-LOC");
    assert_eq!(entities[0].end, None);
}

#[tokio::test]
async fn question_answering_sends_question_and_context_and_reads_object_or_list() {
    let args = with_other(
        text("What is the capital of France?"),
        &[("context", json!("The capital of France is Paris."))],
    );
    let (out, call) = run_ok(
        TaskKind::QuestionAnswering,
        args.clone(),
        canned_reply(TaskKind::QuestionAnswering),
    )
    .await;
    assert_eq!(
        assert_json_call(&call, None),
        json!({"inputs": {"question": "What is the capital of France?", "context": "The capital of France is Paris."}})
    );
    let InferenceOutput::Answers(answers) = out else {
        panic!("{out:?}")
    };
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0].answer, "Paris");
    assert_eq!((answers[0].start, answers[0].end), (Some(28), Some(33)));

    let list = HfReply::json(json!([
        {"answer": "Paris", "score": 0.9, "start": 1, "end": 6},
        {"answer": "France", "score": 0.05, "start": 7, "end": 13},
    ]));
    let InferenceOutput::Answers(answers) = decode(TaskKind::QuestionAnswering, args, list).await
    else {
        panic!()
    };
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[1].answer, "France");
}

#[tokio::test]
async fn question_answering_takes_an_explicit_question_with_the_text_as_context() {
    let args = with_other(
        text("Paris is the capital."),
        &[("question", json!("Capital?"))],
    );
    let (_, call) = run_ok(
        TaskKind::QuestionAnswering,
        args,
        canned_reply(TaskKind::QuestionAnswering),
    )
    .await;
    assert_eq!(
        call.json.unwrap(),
        json!({"inputs": {"question": "Capital?", "context": "Paris is the capital."}})
    );
}

#[tokio::test]
async fn question_answering_without_context_is_bad_input_before_any_call() {
    let (result, calls) = run(
        TaskKind::QuestionAnswering,
        text("What is the capital of France?"),
        canned_reply(TaskKind::QuestionAnswering),
    )
    .await;
    let Err(InferenceError::BadInput { task, message }) = result else {
        panic!("{result:?}")
    };
    assert_eq!(task, TaskKind::QuestionAnswering);
    assert!(message.contains("context"), "{message}");
    assert!(calls.is_empty());
}

#[tokio::test]
async fn sentence_similarity_uses_the_pipeline_route_and_reads_scores() {
    let args = with_other(
        text("That is a happy person"),
        &[(
            "sentences",
            json!(["That is a happy dog", "Today is a sunny day"]),
        )],
    );
    let (out, call) = run_ok(
        TaskKind::SentenceSimilarity,
        args,
        canned_reply(TaskKind::SentenceSimilarity),
    )
    .await;
    assert_eq!(
        assert_json_call(&call, Some("sentence-similarity")),
        json!({"inputs": {
            "source_sentence": "That is a happy person",
            "sentences": ["That is a happy dog", "Today is a sunny day"],
        }})
    );
    assert_eq!(out, InferenceOutput::Similarities(vec![0.8213, 0.1047]));
}

#[tokio::test]
async fn sentence_similarity_accepts_other_spellings_of_the_sentences() {
    for (extra, expected) in [
        (
            ("sentences", json!("a dog\n a cat \n")),
            json!(["a dog", "a cat"]),
        ),
        (("text2", json!("a bird")), json!(["a bird"])),
        (("target_sentence", json!("a fish")), json!(["a fish"])),
    ] {
        let args = with_other(text("a person"), &[extra]);
        let (_, call) = run_ok(
            TaskKind::SentenceSimilarity,
            args,
            HfReply::json(json!([0.5])),
        )
        .await;
        assert_eq!(call.json.unwrap()["inputs"]["sentences"], expected);
    }
    let (result, calls) = run(
        TaskKind::SentenceSimilarity,
        text("alone"),
        HfReply::json(json!([0.5])),
    )
    .await;
    assert!(
        matches!(result, Err(InferenceError::BadInput { .. })),
        "{result:?}"
    );
    assert!(calls.is_empty());
}

#[tokio::test]
async fn feature_extraction_uses_the_pipeline_route_with_root_options() {
    let args = with_other(text("hello"), &[("normalize", json!(true))]);
    let (out, call) = run_ok(
        TaskKind::FeatureExtraction,
        args,
        canned_reply(TaskKind::FeatureExtraction),
    )
    .await;
    assert_eq!(
        assert_json_call(&call, Some("feature-extraction")),
        json!({"inputs": "hello", "normalize": true})
    );
    let InferenceOutput::Embeddings(value) = out else {
        panic!("{out:?}")
    };
    assert_eq!(value[0].as_array().unwrap().len(), 8);

    for shape in [
        json!([0.1, 0.2]),
        json!([[0.1], [0.2]]),
        json!([[[0.1, 0.2]]]),
    ] {
        let out = decode(
            TaskKind::FeatureExtraction,
            text("x"),
            HfReply::json(shape.clone()),
        )
        .await;
        assert_eq!(out, InferenceOutput::Embeddings(shape));
    }
}

#[tokio::test]
async fn summarization_reads_summary_text_in_a_list_or_an_object() {
    let (out, call) = run_ok(
        TaskKind::Summarization,
        text("A long article."),
        canned_reply(TaskKind::Summarization),
    )
    .await;
    assert_eq!(
        assert_json_call(&call, None),
        json!({"inputs": "A long article."})
    );
    assert_eq!(
        out,
        InferenceOutput::Text("A short summary of the given text.".into())
    );
    let out = decode(
        TaskKind::Summarization,
        text("x"),
        HfReply::json(json!({"summary_text": "short"})),
    )
    .await;
    assert_eq!(out, InferenceOutput::Text("short".into()));
}

#[tokio::test]
async fn translation_passes_languages_as_parameters() {
    let args = with_other(
        text("Hello world"),
        &[
            ("src_lang", json!("en")),
            ("tgt_lang", json!("fr")),
            ("unrelated", json!("x")),
        ],
    );
    let (out, call) = run_ok(
        TaskKind::Translation,
        args,
        canned_reply(TaskKind::Translation),
    )
    .await;
    assert_eq!(
        assert_json_call(&call, None),
        json!({"inputs": "Hello world", "parameters": {"src_lang": "en", "tgt_lang": "fr"}})
    );
    assert_eq!(out, InferenceOutput::Text("Bonjour le monde.".into()));
}

#[tokio::test]
async fn generation_tasks_read_generated_text_in_a_list_or_an_object() {
    for task in [
        TaskKind::TextGeneration,
        TaskKind::Text2TextGeneration,
        TaskKind::Conversational,
    ] {
        let (out, call) = run_ok(task, text("Once upon a time"), canned_reply(task)).await;
        assert_eq!(
            assert_json_call(&call, None),
            json!({"inputs": "Once upon a time"}),
            "{task}"
        );
        assert_eq!(
            out,
            InferenceOutput::Text("The quick brown fox jumps over the lazy dog.".into()),
            "{task}"
        );
        let object =
            HfReply::json(json!({"generated_text": "tgi", "details": {"finish_reason": "length"}}));
        assert_eq!(
            decode(task, text("x"), object).await,
            InferenceOutput::Text("tgi".into())
        );
    }
    let args = with_other(text("hi"), &[("max_new_tokens", json!(20))]);
    let (_, call) = run_ok(
        TaskKind::TextGeneration,
        args,
        canned_reply(TaskKind::TextGeneration),
    )
    .await;
    assert_eq!(
        call.json.unwrap()["parameters"],
        json!({"max_new_tokens": 20})
    );
}

#[tokio::test]
async fn zero_shot_sends_candidate_labels_and_reads_both_shapes() {
    let args = with_other(
        text("I loved the movie"),
        &[
            ("candidate_labels", json!("positive, negative")),
            ("multi_label", json!(false)),
        ],
    );
    let (out, call) = run_ok(
        TaskKind::ZeroShotClassification,
        args.clone(),
        canned_reply(TaskKind::ZeroShotClassification),
    )
    .await;
    assert_eq!(
        assert_json_call(&call, None),
        json!({"inputs": "I loved the movie", "parameters": {
            "candidate_labels": ["positive", "negative"], "multi_label": false,
        }})
    );
    assert_eq!(
        out,
        InferenceOutput::Labels(labels(&[("positive", 0.91), ("negative", 0.09)]))
    );

    let legacy = HfReply::json(json!({
        "sequence": "I loved the movie",
        "labels": ["positive", "negative"],
        "scores": [0.8, 0.2],
    }));
    let out = decode(TaskKind::ZeroShotClassification, args.clone(), legacy).await;
    assert_eq!(
        out,
        InferenceOutput::Labels(labels(&[("positive", 0.8), ("negative", 0.2)]))
    );

    let array_labels = with_other(text("x"), &[("candidate_labels", json!(["a", "b"]))]);
    let (_, call) = run_ok(
        TaskKind::ZeroShotClassification,
        array_labels,
        HfReply::json(json!([])),
    )
    .await;
    assert_eq!(
        call.json.unwrap()["parameters"]["candidate_labels"],
        json!(["a", "b"])
    );

    let (result, calls) = run(
        TaskKind::ZeroShotClassification,
        text("x"),
        HfReply::json(json!([])),
    )
    .await;
    assert!(
        matches!(&result, Err(InferenceError::BadInput { message, .. }) if message.contains("candidate_labels")),
        "{result:?}"
    );
    assert!(calls.is_empty());
}

#[tokio::test]
async fn tabular_classification_sends_the_table_as_data() {
    let table = json!({"fixed_acidity": ["7.4", "7.8"], "alcohol": ["9.4", "9.8"]});
    let args = with_other(ResolvedArgs::default(), &[("table", table.clone())]);
    let (out, call) = run_ok(
        TaskKind::TabularClassification,
        args,
        canned_reply(TaskKind::TabularClassification),
    )
    .await;
    assert_eq!(
        assert_json_call(&call, None),
        json!({"inputs": {"data": table}})
    );
    assert_eq!(out, InferenceOutput::Json(json!(["1"])));

    // A table given as a JSON string.
    let args = with_other(
        ResolvedArgs::default(),
        &[("table", json!(table.to_string()))],
    );
    let (_, call) = run_ok(
        TaskKind::TabularClassification,
        args,
        HfReply::json(json!([1])),
    )
    .await;
    assert_eq!(call.json.unwrap(), json!({"inputs": {"data": table}}));

    let (result, calls) = run(
        TaskKind::TabularClassification,
        text("no table"),
        HfReply::json(json!([1])),
    )
    .await;
    assert!(
        matches!(result, Err(InferenceError::BadInput { .. })),
        "{result:?}"
    );
    assert!(calls.is_empty());
}

// ---------------------------------------------------------------- image tasks

#[tokio::test]
async fn image_classification_sends_raw_bytes() {
    let (out, call) = run_ok(
        TaskKind::ImageClassification,
        image_args(),
        canned_reply(TaskKind::ImageClassification),
    )
    .await;
    assert_bytes_call(&call, &png_blob());
    assert_eq!(
        out,
        InferenceOutput::Labels(labels(&[
            ("tabby, tabby cat", 0.9412),
            ("Egyptian cat", 0.0387)
        ]))
    );
}

#[tokio::test]
async fn raw_bytes_of_unknown_type_go_without_content_type() {
    let mut args = image_args();
    if let Some(image) = args.image.as_mut() {
        image.mime = None;
    }
    let (_, call) = run_ok(
        TaskKind::ImageClassification,
        args,
        canned_reply(TaskKind::ImageClassification),
    )
    .await;
    assert_eq!(call.content_type, None);
    assert_eq!(call.body, sample_png());
}

#[tokio::test]
async fn object_detection_reads_boxes() {
    let (out, call) = run_ok(
        TaskKind::ObjectDetection,
        image_args(),
        canned_reply(TaskKind::ObjectDetection),
    )
    .await;
    assert_bytes_call(&call, &png_blob());
    let InferenceOutput::Detections(found) = out else {
        panic!("{out:?}")
    };
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].label, "cat");
    assert_eq!((found[0].bbox.xmin, found[0].bbox.ymax), (1.0, 6.0));
}

#[tokio::test]
async fn image_segmentation_reads_base64_masks() {
    let (out, call) = run_ok(
        TaskKind::ImageSegmentation,
        image_args(),
        canned_reply(TaskKind::ImageSegmentation),
    )
    .await;
    assert_bytes_call(&call, &png_blob());
    let InferenceOutput::Segments(segments) = out else {
        panic!("{out:?}")
    };
    assert_eq!(segments.len(), 2);
    let mask = B64.decode(&segments[0].mask).unwrap();
    assert!(mask.starts_with(b"\x89PNG"));

    // Semantic segmentation: null scores; a data-URL mask is unwrapped.
    let data_url = format!(
        "data:image/png;base64,{}",
        B64.encode(png_gray(1, 1, &[255]))
    );
    let reply = HfReply::json(json!([{"label": "sky", "score": null, "mask": data_url}]));
    let InferenceOutput::Segments(segments) =
        decode(TaskKind::ImageSegmentation, image_args(), reply).await
    else {
        panic!()
    };
    assert_eq!(segments[0].score, None);
    assert!(
        B64.decode(&segments[0].mask)
            .unwrap()
            .starts_with(b"\x89PNG")
    );

    let bad = HfReply::json(json!([{"label": "sky", "score": 0.5, "mask": "%%% not base64"}]));
    let (result, _) = run(TaskKind::ImageSegmentation, image_args(), bad).await;
    assert!(
        matches!(result, Err(InferenceError::Decode { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn image_to_text_reads_a_list_or_a_bare_object() {
    let (out, call) = run_ok(
        TaskKind::ImageToText,
        image_args(),
        canned_reply(TaskKind::ImageToText),
    )
    .await;
    assert_bytes_call(&call, &png_blob());
    assert_eq!(
        out,
        InferenceOutput::Text("a cat sitting on a couch with a remote".into())
    );
    let bare = HfReply::json(json!({"generated_text": "a dog"}));
    assert_eq!(
        decode(TaskKind::ImageToText, image_args(), bare).await,
        InferenceOutput::Text("a dog".into())
    );
}

#[tokio::test]
async fn visual_question_answering_sends_image_and_question() {
    let args = ResolvedArgs {
        text: Some("How many cats?".into()),
        ..image_args()
    };
    let (out, call) = run_ok(
        TaskKind::VisualQuestionAnswering,
        args,
        canned_reply(TaskKind::VisualQuestionAnswering),
    )
    .await;
    let body = assert_json_call(&call, None);
    assert_eq!(body["inputs"]["question"], "How many cats?");
    assert_eq!(
        B64.decode(body["inputs"]["image"].as_str().unwrap())
            .unwrap(),
        sample_png()
    );
    let InferenceOutput::Answers(answers) = out else {
        panic!("{out:?}")
    };
    assert_eq!(answers[0].answer, "two");
    assert_eq!(answers.len(), 2);

    // The question may come as an explicit argument; a bare object is read too.
    let args = with_other(image_args(), &[("question", json!("What color?"))]);
    let reply = HfReply::json(json!({"answer": "red", "score": 0.7}));
    let (out, call) = run_ok(TaskKind::VisualQuestionAnswering, args, reply).await;
    assert_eq!(call.json.unwrap()["inputs"]["question"], "What color?");
    let InferenceOutput::Answers(answers) = out else {
        panic!()
    };
    assert_eq!(answers[0].answer, "red");
}

#[tokio::test]
async fn document_question_answering_sends_image_and_question() {
    let args = ResolvedArgs {
        text: Some("What is the invoice number?".into()),
        ..image_args()
    };
    let (out, call) = run_ok(
        TaskKind::DocumentQuestionAnswering,
        args,
        canned_reply(TaskKind::DocumentQuestionAnswering),
    )
    .await;
    let body = assert_json_call(&call, None);
    assert_eq!(body["inputs"]["question"], "What is the invoice number?");
    assert_eq!(
        B64.decode(body["inputs"]["image"].as_str().unwrap())
            .unwrap(),
        sample_png()
    );
    let InferenceOutput::Answers(answers) = out else {
        panic!("{out:?}")
    };
    assert_eq!(answers[0].answer, "us-001");
    assert_eq!(answers[0].start, Some(16));

    let (result, calls) = run(
        TaskKind::DocumentQuestionAnswering,
        image_args(),
        canned_reply(TaskKind::DocumentQuestionAnswering),
    )
    .await;
    assert!(
        matches!(result, Err(InferenceError::BadInput { .. })),
        "{result:?}"
    );
    assert!(calls.is_empty());
}

#[tokio::test]
async fn depth_estimation_decodes_the_depth_image() {
    let (out, call) = run_ok(
        TaskKind::DepthEstimation,
        image_args(),
        canned_reply(TaskKind::DepthEstimation),
    )
    .await;
    assert_bytes_call(&call, &png_blob());
    let InferenceOutput::Depth { image, predicted } = out else {
        panic!("{out:?}")
    };
    let image = image.unwrap();
    assert_eq!(image.mime.as_deref(), Some("image/png"));
    assert!(image.bytes.starts_with(b"\x89PNG"));
    assert_eq!(predicted.unwrap().as_array().unwrap().len(), 8);

    // A server that answers with the depth image itself.
    let out = decode(
        TaskKind::DepthEstimation,
        image_args(),
        HfReply::bytes("image/png", sample_png()),
    )
    .await;
    let InferenceOutput::Depth {
        image: Some(image),
        predicted: None,
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(image.bytes, sample_png());
}

#[tokio::test]
async fn image_to_image_sends_bytes_or_json_with_a_prompt_and_accepts_png() {
    let (out, call) = run_ok(
        TaskKind::ImageToImage,
        image_args(),
        canned_reply(TaskKind::ImageToImage),
    )
    .await;
    assert_bytes_call(&call, &png_blob());
    assert_eq!(call.accept.as_deref(), Some("image/png"));
    let InferenceOutput::Media(blob) = out else {
        panic!("{out:?}")
    };
    assert_eq!(blob.mime.as_deref(), Some("image/png"));
    assert_eq!(blob.bytes, sample_png());

    let args = ResolvedArgs {
        text: Some("make it snowy".into()),
        ..image_args()
    };
    let (_, call) = run_ok(
        TaskKind::ImageToImage,
        args,
        canned_reply(TaskKind::ImageToImage),
    )
    .await;
    let body = assert_json_call(&call, None);
    assert_eq!(
        B64.decode(body["inputs"].as_str().unwrap()).unwrap(),
        sample_png()
    );
    assert_eq!(body["parameters"], json!({"prompt": "make it snowy"}));
    assert_eq!(call.accept.as_deref(), Some("image/png"));
}

#[tokio::test]
async fn text_to_image_sends_the_prompt_and_reads_image_bytes() {
    let args = with_other(
        text("an astronaut riding a horse"),
        &[("width", json!(512))],
    );
    let jpeg = b"\xff\xd8\xff\xe0 a tiny jpeg".to_vec();
    let (out, call) = run_ok(
        TaskKind::TextToImage,
        args,
        HfReply::bytes("image/jpeg", jpeg.clone()),
    )
    .await;
    assert_eq!(
        assert_json_call(&call, None),
        json!({"inputs": "an astronaut riding a horse", "parameters": {"width": 512}})
    );
    assert_eq!(
        out,
        InferenceOutput::Media(hgpt_core::output::Blob {
            bytes: jpeg.into(),
            mime: Some("image/jpeg".into())
        })
    );

    // Without a Content-Type, or with a generic one, the type is sniffed.
    for reply in [
        HfReply::untyped(sample_png()),
        HfReply::bytes("application/octet-stream", sample_png()),
    ] {
        let InferenceOutput::Media(blob) = decode(TaskKind::TextToImage, text("x"), reply).await
        else {
            panic!()
        };
        assert_eq!(blob.mime.as_deref(), Some("image/png"));
    }
}

// ---------------------------------------------------------------- audio tasks

#[tokio::test]
async fn speech_recognition_sends_audio_and_reads_text_and_chunks() {
    let (out, call) = run_ok(
        TaskKind::AutomaticSpeechRecognition,
        audio_args(),
        canned_reply(TaskKind::AutomaticSpeechRecognition),
    )
    .await;
    assert_bytes_call(&call, &wav_blob());
    let InferenceOutput::Transcription { text, chunks } = out else {
        panic!("{out:?}")
    };
    assert_eq!(text, "hello world");
    assert_eq!(chunks.unwrap().as_array().unwrap().len(), 2);

    let plain = HfReply::json(json!({"text": "just text"}));
    assert_eq!(
        decode(TaskKind::AutomaticSpeechRecognition, audio_args(), plain).await,
        InferenceOutput::Transcription {
            text: "just text".into(),
            chunks: None
        }
    );
}

#[tokio::test]
async fn audio_classification_sends_audio_and_reads_labels() {
    let (out, call) = run_ok(
        TaskKind::AudioClassification,
        audio_args(),
        canned_reply(TaskKind::AudioClassification),
    )
    .await;
    assert_bytes_call(&call, &wav_blob());
    assert_eq!(
        out,
        InferenceOutput::Labels(labels(&[("speech", 0.8821), ("music", 0.0712)]))
    );
}

#[tokio::test]
async fn audio_to_audio_reads_sources() {
    let (out, call) = run_ok(
        TaskKind::AudioToAudio,
        audio_args(),
        canned_reply(TaskKind::AudioToAudio),
    )
    .await;
    assert_bytes_call(&call, &wav_blob());
    let InferenceOutput::AudioSources(sources) = out else {
        panic!("{out:?}")
    };
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0].content_type, "audio/wav");
    assert_eq!(B64.decode(&sources[0].blob).unwrap(), sample_wav());
}

#[tokio::test]
async fn text_to_speech_reads_audio_bytes() {
    let flac = b"fLaC\0\0\0\x22 tiny flac".to_vec();
    let (out, call) = run_ok(
        TaskKind::TextToSpeech,
        text("Hello"),
        HfReply::bytes("audio/flac", flac.clone()),
    )
    .await;
    assert_eq!(assert_json_call(&call, None), json!({"inputs": "Hello"}));
    let InferenceOutput::Media(blob) = out else {
        panic!("{out:?}")
    };
    assert_eq!(blob.mime.as_deref(), Some("audio/flac"));
    assert_eq!(blob.bytes, flac);

    let InferenceOutput::Media(blob) = decode(
        TaskKind::TextToSpeech,
        text("Hi"),
        canned_reply(TaskKind::TextToSpeech),
    )
    .await
    else {
        panic!()
    };
    assert_eq!(blob.mime.as_deref(), Some("audio/wav"));
}

#[tokio::test]
async fn text_to_video_reads_video_bytes() {
    let (out, call) = run_ok(
        TaskKind::TextToVideo,
        text("a dancing cat"),
        canned_reply(TaskKind::TextToVideo),
    )
    .await;
    assert_eq!(
        assert_json_call(&call, None),
        json!({"inputs": "a dancing cat"})
    );
    let InferenceOutput::Media(blob) = out else {
        panic!("{out:?}")
    };
    assert_eq!(blob.mime.as_deref(), Some("video/mp4"));
    assert_eq!(blob.bytes, sample_mp4());
}

// ------------------------------------------------------------ input checking

#[tokio::test]
async fn missing_media_is_bad_input_naming_the_argument_with_no_call() {
    for (task, args, missing) in [
        (TaskKind::ImageClassification, text("no image"), "image"),
        (TaskKind::ObjectDetection, ResolvedArgs::default(), "image"),
        (
            TaskKind::VisualQuestionAnswering,
            text("How many?"),
            "image",
        ),
        (TaskKind::ImageToImage, text("snowy"), "image"),
        (TaskKind::AutomaticSpeechRecognition, image_args(), "audio"),
        (TaskKind::AudioToAudio, ResolvedArgs::default(), "audio"),
        (TaskKind::TextClassification, image_args(), "text"),
        (TaskKind::TextToImage, ResolvedArgs::default(), "text"),
    ] {
        let (result, calls) = run(task, args, canned_reply(task)).await;
        match result {
            Err(InferenceError::BadInput { task: t, message }) => {
                assert_eq!(t, task);
                assert!(
                    message.contains(&format!("`{missing}`")),
                    "{task}: {message}"
                );
            }
            other => panic!("{task}: {other:?}"),
        }
        assert!(calls.is_empty(), "{task} made a call");
    }
}

#[tokio::test]
async fn controlnet_tasks_are_unsupported_with_no_call() {
    for task in TaskKind::ALL
        .iter()
        .copied()
        .filter(|t| t.controlnet_model().is_some())
    {
        let args = ResolvedArgs {
            text: Some("a house".into()),
            ..image_args()
        };
        let (result, calls) = run(task, args, canned_reply(task)).await;
        match result {
            Err(InferenceError::Unsupported(message)) => {
                assert!(message.contains("local models only"), "{message}")
            }
            other => panic!("{task}: {other:?}"),
        }
        assert!(calls.is_empty());
    }
}

// ----------------------------------------------------------- decode failures

#[tokio::test]
async fn a_json_shape_that_does_not_fit_is_a_decode_error_naming_the_task() {
    let cases = [
        (TaskKind::TextClassification, text("x"), json!({"foo": 1})),
        (
            TaskKind::Summarization,
            text("x"),
            json!([{"translation": "y"}]),
        ),
        (
            TaskKind::SentenceSimilarity,
            with_other(text("a"), &[("text2", json!("b"))]),
            json!(["x"]),
        ),
        (TaskKind::FeatureExtraction, text("x"), json!([["a", "b"]])),
        (
            TaskKind::ObjectDetection,
            image_args(),
            json!([{"label": "cat"}]),
        ),
        (
            TaskKind::AutomaticSpeechRecognition,
            audio_args(),
            json!({"transcript": "x"}),
        ),
        (
            TaskKind::DepthEstimation,
            image_args(),
            json!({"nothing": true}),
        ),
        (TaskKind::TextToImage, text("x"), json!({"images": 3})),
    ];
    for (task, args, body) in cases {
        let (result, calls) = run(task, args, HfReply::json(body)).await;
        match result {
            Err(InferenceError::Decode { model, message }) => {
                assert_eq!(model, MODEL);
                assert!(message.contains(task.as_str()), "{message}");
                assert!(message.contains("found"), "{message}");
            }
            other => panic!("{task}: {other:?}"),
        }
        assert_eq!(calls.len(), 1, "a decode error is not retried");
    }
}

#[tokio::test]
async fn invalid_json_and_unexpected_bytes_are_decode_errors() {
    let (result, _) = run(
        TaskKind::TextClassification,
        text("x"),
        HfReply::bytes("application/json", "[{\"label\": "),
    )
    .await;
    assert!(
        matches!(&result, Err(InferenceError::Decode { message, .. }) if message.contains("not valid JSON")),
        "{result:?}"
    );
    let (result, _) = run(
        TaskKind::ImageClassification,
        image_args(),
        HfReply::bytes("image/png", sample_png()),
    )
    .await;
    assert!(
        matches!(&result, Err(InferenceError::Decode { message, .. }) if message.contains("image/png")),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_error_document_with_status_200_is_a_server_error() {
    let (result, _) = run(
        TaskKind::TextClassification,
        text("x"),
        HfReply::json(json!({"error": "Input is too long"})),
    )
    .await;
    assert_eq!(
        result,
        Err(InferenceError::Server {
            model: MODEL.into(),
            status: 200,
            message: "Input is too long".into()
        })
    );
}

#[tokio::test]
async fn every_canned_reply_decodes_for_its_task() {
    for task in TaskKind::ALL
        .iter()
        .copied()
        .filter(|t| t.controlnet_model().is_none())
    {
        let args = ResolvedArgs {
            text: Some("some text".into()),
            image: Some(png_blob()),
            audio: Some(wav_blob()),
            video: None,
            other: [
                ("context".to_string(), json!("some context")),
                ("sentences".to_string(), json!(["a", "b"])),
                (
                    "candidate_labels".to_string(),
                    json!(["positive", "negative"]),
                ),
                ("table".to_string(), json!({"a": ["1"]})),
            ]
            .into_iter()
            .collect(),
        };
        let (out, _) = run_ok(task, args, canned_reply(task)).await;
        assert!(
            !matches!(out, InferenceOutput::Json(_)) || task == TaskKind::TabularClassification,
            "{task}: {out:?}"
        );
    }
}

#[tokio::test]
async fn zero_shot_image_classification_sends_the_image_and_the_labels() {
    // The labels as a plan gives them: the text, comma-separated.
    let args = ResolvedArgs {
        text: Some("cat, dog , ".into()),
        ..image_args()
    };
    let task = TaskKind::ZeroShotImageClassification;
    let (out, call) = run_ok(task, args, canned_reply(task)).await;
    let body = assert_json_call(&call, None);
    assert_eq!(
        B64.decode(body["inputs"].as_str().unwrap()).unwrap(),
        sample_png()
    );
    assert_eq!(
        body["parameters"]["candidate_labels"],
        json!(["cat", "dog"])
    );
    let InferenceOutput::Labels(labels) = out else {
        panic!("{out:?}")
    };
    assert_eq!(labels[0].label, "cat");

    // As an explicit list, with a template.
    let args = with_other(
        image_args(),
        &[
            ("candidate_labels", json!(["red car", "tree"])),
            ("hypothesis_template", json!("a photo of a {}")),
        ],
    );
    let (_, call) = run_ok(task, args, canned_reply(task)).await;
    let body = call.json.unwrap();
    assert_eq!(
        body["parameters"]["candidate_labels"],
        json!(["red car", "tree"])
    );
    assert_eq!(body["parameters"]["hypothesis_template"], "a photo of a {}");
}
