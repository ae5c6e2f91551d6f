#!/usr/bin/env python3
"""Check hgpt's model server with the official `huggingface_hub` InferenceClient.

Usage: client_check.py URL [--fixtures DIR]

Every model the server lists at GET /models is called through
`InferenceClient(base_url=URL/models/ID)` with the client method of its task, and
what the client parses is compared with the reference outputs:
`sentence-transformers/all-MiniLM-L6-v2` with DIR/minilm/embeddings.json, a model
cached as `hgpt-fixtures/NAME` with DIR/NAME/expected.json (the transformers
pipeline's output). depth-estimation, for which the client has no method, is
checked over plain HTTP with the wire protocol's raw-image request. A listed model
whose task has no check here is a failure, so new pipelines must be added. A model the server refuses as `unsupported` (an
architecture its pipeline does not run yet) and fixtures the server does not list
are reported as skipped.

The last line on stdout is a JSON summary:
{"client": VERSION, "checked": {ID: [TASK, ...]}, "skipped": {ID: REASON}}.
Exit status 0 when every check passed, 1 otherwise.
"""

import argparse
import base64
import io
import json
import math
import os
import struct
import sys
import traceback
import urllib.request
import wave

import huggingface_hub
import numpy as np
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from PIL import Image

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
FIXTURE_PREFIX = "hgpt-fixtures/"
TOL = 1e-4


class CheckFailed(AssertionError):
    pass


def check(condition, message):
    if not condition:
        raise CheckFailed(message)


def close(a, b, what):
    check(math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=TOL), f"{what}: {a} != {b} (within {TOL})")


def get_json(url):
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.load(response)


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --- per-task checks: each returns the task names it checked -------------------


def check_feature_extraction(client, model_id, fixtures):
    if model_id != MINILM:
        vector = client.feature_extraction("a short sentence")
        check(vector.dtype == np.float32 and vector.size > 0, f"{model_id}: {vector!r}")
        scores = client.sentence_similarity("a", ["b", "c"])
        check(len(scores) == 2, f"{model_id}: {scores!r}")
        return ["feature-extraction", "sentence-similarity"]
    reference = load_json(os.path.join(fixtures, "minilm", "embeddings.json"))
    for case in reference["sentences"]:
        vector = client.feature_extraction(case["text"])
        check(vector.dtype == np.float32, f"dtype {vector.dtype}")
        flat = vector.reshape(-1)
        check(flat.shape == (len(case["embedding"]),), f"shape {vector.shape}")
        for i, (a, b) in enumerate(zip(flat, case["embedding"])):
            close(a, b, f"embedding of {case['text'][:30]!r}[{i}]")
    texts = [c["text"] for c in reference["sentences"][:3]]
    batch = client.feature_extraction(texts)
    check(batch.shape == (3, 384), f"batch shape {batch.shape}")
    for row, case in zip(batch, reference["sentences"][:3]):
        for i, (a, b) in enumerate(zip(row, case["embedding"])):
            close(a, b, f"batch embedding [{i}]")
    first = reference["sentences"][0]
    raw = client.feature_extraction(first["text"], normalize=False).reshape(-1)
    for i, (a, b) in enumerate(zip(raw, first["raw_embedding"])):
        close(a, b, f"normalize=False embedding [{i}]")

    similarity = reference["sentence_similarity"]
    scores = client.sentence_similarity(similarity["source_sentence"], similarity["sentences"])
    check(isinstance(scores, list) and len(scores) == len(similarity["scores"]), f"scores {scores!r}")
    for a, b in zip(scores, similarity["scores"]):
        close(a, b, "similarity")
    return ["feature-extraction", "sentence-similarity"]


def same_labels(got, want, what):
    check(isinstance(got, list), f"{what}: expected a list, got {got!r}")
    check([g.label for g in got] == [w["label"] for w in want], f"{what}: labels {got!r} != {want!r}")
    for g, w in zip(got, want):
        close(g.score, w["score"], f"{what}: score of {w['label']}")


def check_text_classification(client, model_id, expected):
    for case in expected["cases"]:
        what = f"{model_id} {case['text'][:30]!r}"
        all_labels = case["pipeline_top_k_none"]
        # Without top_k, the hosted API answers every label and the transformers
        # pipeline only the best one: either is accepted, nothing else.
        default = client.text_classification(case["text"])
        check(isinstance(default, list) and len(default) in (1, len(all_labels)), f"{what}: {default!r}")
        same_labels(default, all_labels[: len(default)], what)
        same_labels(client.text_classification(case["text"], top_k=1), case["pipeline"], what + " top_k=1")
        same_labels(client.text_classification(case["text"], top_k=len(all_labels)), all_labels, what + " top_k")
    return ["text-classification"]


def check_token_classification(client, model_id, expected):
    for case in expected["cases"]:
        what = f"{model_id} {case['text'][:30]!r}"
        got = client.token_classification(case["text"])
        want = case["pipeline"]
        check(isinstance(got, list) and len(got) == len(want), f"{what}: {got!r} != {want!r}")
        for g, w in zip(got, want):
            check(
                (g.entity_group, g.word, g.start, g.end) == (w["entity_group"], w["word"], w["start"], w["end"]),
                f"{what}: {g!r} != {w!r}",
            )
            close(g.score, w["score"], f"{what}: score of {w['word']!r}")
    return ["token-classification"]


def same_answer(got, want, what):
    check(not isinstance(got, list), f"{what}: expected one answer, got {got!r}")
    check((got.answer, got.start, got.end) == (want["answer"], want["start"], want["end"]), f"{what}: {got!r} != {want!r}")
    close(got.score, want["score"], f"{what}: score")


def check_question_answering(client, model_id, expected):
    for case in expected["cases"]:
        what = f"{model_id} {case['question']!r}"
        same_answer(client.question_answering(question=case["question"], context=case["context"]), case["pipeline"], what)
        want = case["pipeline_top_k_3"]
        got = client.question_answering(question=case["question"], context=case["context"], top_k=3)
        check(isinstance(got, list) and len(got) == len(want), f"{what} top_k=3: {got!r} != {want!r}")
        for g, w in zip(got, want):
            same_answer(g, w, what + " top_k=3")
    return ["question-answering"]


def read_image(fixtures, case):
    with open(os.path.join(fixtures, case["image"]), "rb") as f:
        return f.read()


def check_image_classification(client, model_id, expected, fixtures):
    for case in expected["cases"]:
        what = f"{model_id} {case['image']}"
        image = read_image(fixtures, case)
        # No parameters: the client sends the raw bytes without a Content-Type.
        same_labels(client.image_classification(image), case["pipeline"], what)
        # With parameters: JSON with the image as base64.
        same_labels(client.image_classification(image, top_k=2), case["pipeline_top_k_2"], what + " top_k=2")
    return ["image-classification"]


def same_detections(got, want, what):
    check(isinstance(got, list) and len(got) == len(want), f"{what}: {got!r} != {want!r}")
    for g, w in zip(got, want):
        box = g.box
        coords = (box.xmin, box.ymin, box.xmax, box.ymax)
        check(all(isinstance(c, int) for c in coords), f"{what}: box {coords} is not integers")
        want_box = w["box"]
        check(
            (g.label, coords) == (w["label"], (want_box["xmin"], want_box["ymin"], want_box["xmax"], want_box["ymax"])),
            f"{what}: {g!r} != {w!r}",
        )
        close(g.score, w["score"], f"{what}: score")


def check_object_detection(client, model_id, expected, fixtures):
    for case in expected["cases"]:
        what = f"{model_id} {case['image']}"
        image = read_image(fixtures, case)
        same_detections(client.object_detection(image), case["pipeline"], what)
        same_detections(client.object_detection(image, threshold=0.0), case["pipeline_threshold_0"], what + " threshold=0")
        same_detections(
            client.object_detection(image, threshold=0.3), case["pipeline_threshold_0_3"], what + " threshold=0.3"
        )
    return ["object-detection"]


def check_image_segmentation(client, model_id, expected, fixtures):
    for case in expected["cases"]:
        runs = [(f"{model_id} {case['image']}", {}, case["pipeline"])]
        if "pipeline_threshold_0_5" in case:  # panoptic: the thresholds are parameters
            runs.append((f"{model_id} {case['image']} threshold=0.5", {"threshold": 0.5},
                         case["pipeline_threshold_0_5"]))
        for what, parameters, want in runs:
            same_segments(client.image_segmentation(read_image(fixtures, case), **parameters),
                          want, what, case)
    return ["image-segmentation"]


def same_segments(got, want, what, case):
    check(len(got) == len(want), f"{what}: {len(got)} segments, expected {len(want)}")
    for g, w in zip(got, want):
        check(g.label == w["label"], f"{what}: {g.label!r} != {w['label']!r}")
        if w.get("score") is None:  # semantic segmentation has no scores
            check(g.score is None, f"{what}: score {g.score!r} where the pipeline has none")
        else:
            close(g.score, w["score"], f"{what}: score of {w['label']}")
        height, width = case["original_size"]
        check(g.mask.mode == "L" and g.mask.size == (width, height), f"{what}: mask {g.mask.mode} {g.mask.size}")
        bits = [1 if p == 255 else (0 if p == 0 else -1) for p in g.mask.getdata()]
        check(bits == w["mask"], f"{what}: the mask of {g.label} differs")


def check_image_to_text(client, model_id, expected, fixtures):
    for case in expected["cases"]:
        what = f"{model_id} {case['image']}"
        got = client.image_to_text(read_image(fixtures, case))
        want = case["pipeline"][0]["generated_text"]
        check(got.generated_text == want, f"{what}: {got.generated_text!r} != {want!r}")
    return ["image-to-text"]


def check_visual_question_answering(client, model_id, expected, fixtures):
    for case in expected["cases"]:
        what = f"{model_id} {case['image']} {case['question']!r}"
        image = read_image(fixtures, case)
        got = client.visual_question_answering(image, case["question"])
        if "answer" in case:
            # A generative model: one answer, scored with its probability under the model.
            check(isinstance(got, list) and len(got) == 1, f"{what}: {got!r}")
            check(got[0].answer == case["answer"], f"{what}: {got[0].answer!r} != {case['answer']!r}")
            check(0.0 < got[0].score <= 1.0, f"{what}: score {got[0].score}")
            continue
        for answers, want in ((got, case["pipeline"]),
                              (client.visual_question_answering(image, case["question"], top_k=2),
                               case["pipeline_top_k_2"])):
            check([a.answer for a in answers] == [w["answer"] for w in want], f"{what}: {answers!r} != {want!r}")
            for a, w in zip(answers, want):
                close(a.score, w["score"], f"{what}: score of {w['answer']}")
    return ["visual-question-answering"]


def check_zero_shot_image_classification(client, model_id, expected, fixtures):
    labels = expected["candidate_labels"]
    for case in expected["cases"]:
        what = f"{model_id} {case['image']}"
        image = read_image(fixtures, case)
        same_labels(client.zero_shot_image_classification(image, candidate_labels=labels), case["pipeline"], what)
        same_labels(
            client.zero_shot_image_classification(image, candidate_labels=labels[:2], hypothesis_template="a {} here"),
            case["pipeline_template"],
            what + " template",
        )
    return ["zero-shot-image-classification"]


def check_depth_estimation(url, model_id, expected, fixtures):
    """POST the raw image to URL/models/ID and compare {predicted_depth, depth} with the
    pipeline's: the depth image to 1 grey level (truncation), the tensor to TOL."""
    for case in expected["cases"]:
        what = f"{model_id} {case['image']}"
        request = urllib.request.Request(f"{url}/models/{model_id}", data=read_image(fixtures, case), method="POST")
        with urllib.request.urlopen(request, timeout=60) as response:
            body = json.load(response)
        height, width = case["original_size"]
        depth = Image.open(io.BytesIO(base64.b64decode(body["depth"])))
        check(depth.mode == "L" and depth.size == (width, height), f"{what}: depth {depth.mode} {depth.size}")
        got = np.asarray(depth, dtype=np.int16).reshape(-1)
        off = np.abs(got - np.array(case["pipeline_depth_image"], dtype=np.int16))
        check(off.max() <= 1 and (off > 0).mean() <= 0.01, f"{what}: {(off > 0).sum()} depth pixels differ")
        predicted = np.array(body["predicted_depth"], dtype=np.float64)
        want = np.array(case["post_processed_depth"], dtype=np.float64)
        check(predicted.shape == want.shape == (height, width), f"{what}: predicted_depth {predicted.shape}")
        scale = max(1.0, float(np.abs(want).max()))
        check(np.abs(predicted - want).max() <= TOL * scale, f"{what}: predicted_depth differs")
    return ["depth-estimation"]


def read_clip(fixtures, expected, case):
    with open(os.path.join(fixtures, expected["clips_folder"], case["clip"]), "rb") as f:
        return f.read()


def check_speech_recognition(client, model_id, expected, fixtures):
    for case in expected["cases"]:
        what = f"{model_id} {case['clip']}"
        # Raw WAV bytes without a Content-Type, as the client sends them.
        got = client.automatic_speech_recognition(read_clip(fixtures, expected, case))
        check(got.text == case["pipeline"]["text"], f"{what}: {got.text!r} != {case['pipeline']['text']!r}")
        # Whisper's segments, asked for in a JSON request's parameters: with
        # the pipeline's default beams, and greedy.
        for key, extra in (("timestamps_beam_pipeline", {"return_timestamps": True}),
                           ("timestamps_pipeline", {"return_timestamps": True,
                                                    "generate_kwargs": {"num_beams": 1}})):
            want = case.get(key)
            if want is None:
                continue
            got = client.automatic_speech_recognition(read_clip(fixtures, expected, case), extra_body=extra)
            check(got.text == want["text"], f"{what} {key}: {got.text!r} != {want['text']!r}")
            chunks = [(c.text, list(c.timestamp)) for c in got.chunks or []]
            wanted = [(c["text"], list(c["timestamp"])) for c in want["chunks"]]

            def same_time(a, b):
                return a is None and b is None or (a is not None and b is not None and abs(a - b) < 1e-6)

            check(len(chunks) == len(wanted) and all(
                t == u and len(s) == len(v) == 2 and all(same_time(x, y) for x, y in zip(s, v))
                for (t, s), (u, v) in zip(chunks, wanted)), f"{what} {key}: chunks {chunks} != {wanted}")
    return ["automatic-speech-recognition"]


def check_audio_classification(client, model_id, expected, fixtures):
    for case in expected["cases"]:
        what = f"{model_id} {case['clip']}"
        audio = read_clip(fixtures, expected, case)
        # The model has four labels: the default top 5 is all of them.
        same_labels(client.audio_classification(audio), case["pipeline"], what)
        # With parameters: JSON with the audio as base64.
        same_labels(client.audio_classification(audio, top_k=2), case["pipeline"][:2], what + " top_k=2")
    return ["audio-classification"]


def check_text_to_speech(client, model_id, expected):
    for case in expected["cases"]:
        what = f"{model_id} {case['text']!r} at rate {case['speaking_rate']}"
        # The reference was made without noise: ask for the same.
        options = {
            "noise_scale": expected["noise_scale"],
            "noise_scale_duration": expected["noise_scale_duration"],
            "speaking_rate": float(case["speaking_rate"]),
        }
        if "speaker_id" in case:
            options["speaker_id"] = int(case["speaker_id"])
            what += f" speaker {case['speaker_id']}"
        audio = client.text_to_speech(case["text"], extra_body=options)
        with wave.open(io.BytesIO(audio)) as wav:
            check(wav.getframerate() == int(case["sampling_rate"]), f"{what}: rate {wav.getframerate()}")
            check(wav.getnchannels() == 1 and wav.getsampwidth() == 2, f"{what}: not 16-bit mono")
            frames = wav.readframes(wav.getnframes())
        samples = [s / 32767.0 for s in struct.unpack(f"<{len(frames) // 2}h", frames)]
        want = case["waveform"]
        check(len(samples) == int(case["samples"]) == len(want), f"{what}: {len(samples)} samples")
        # 16-bit rounding on top of the waveform's 1e-4.
        worst = max(abs(a - b) for a, b in zip(samples, want))
        check(worst < 1e-4 + 1 / 32767, f"{what}: waveform off by {worst}")
    return ["text-to-speech"]


def check_text_to_image(client, model_id, fixtures):
    options = {"num_inference_steps": 2, "width": 16, "height": 24}
    first = client.text_to_image("a red car", seed=3, **options)
    check(first.size == (16, 24), f"{model_id}: size {first.size}")
    again = client.text_to_image("a red car", seed=3, **options)
    check(first.tobytes() == again.tobytes(), f"{model_id}: a seed gives the same image")
    other = client.text_to_image("a red car", seed=4, **options)
    check(first.tobytes() != other.tobytes(), f"{model_id}: another seed gives another image")
    with open(os.path.join(fixtures, "images", "gradient_40x30.png"), "rb") as f:
        image = f.read()
    # The prompt and strength travel as parameters; the size is cut to multiples of 4.
    edited = client.image_to_image(image, prompt="a red car", strength=0.5, num_inference_steps=2)
    check(edited.size == (40, 28), f"{model_id}: image-to-image size {edited.size}")
    check(edited.tobytes() != first.tobytes(), f"{model_id}: image-to-image drew something else")
    return ["text-to-image", "image-to-image"]


def run_checks(client, model, fixtures, url):
    task = model["task"]
    model_id = model["id"]
    if task == "feature-extraction":
        return check_feature_extraction(client, model_id, fixtures)
    check(model_id.startswith(FIXTURE_PREFIX), f"{model_id}: no reference outputs for a {task} model that is not a fixture")
    folder = os.path.join(fixtures, model_id[len(FIXTURE_PREFIX):])
    expected = load_json(os.path.join(folder, "expected.json"))
    check(expected.get("task") in (None, task), f"{model_id}: the server says {task}, the fixture {expected.get('task')}")
    if task == "text-classification":
        return check_text_classification(client, model_id, expected)
    if task == "token-classification":
        return check_token_classification(client, model_id, expected)
    if task == "question-answering":
        return check_question_answering(client, model_id, expected)
    if task == "image-classification":
        return check_image_classification(client, model_id, expected, fixtures)
    if task == "object-detection":
        return check_object_detection(client, model_id, expected, fixtures)
    if task == "image-segmentation":
        return check_image_segmentation(client, model_id, expected, fixtures)
    if task == "image-to-text":
        return check_image_to_text(client, model_id, expected, fixtures)
    if task == "zero-shot-image-classification":
        return check_zero_shot_image_classification(client, model_id, expected, fixtures)
    if task == "visual-question-answering":
        return check_visual_question_answering(client, model_id, expected, fixtures)
    if task == "depth-estimation":
        return check_depth_estimation(url, model_id, expected, fixtures)
    if task == "automatic-speech-recognition":
        return check_speech_recognition(client, model_id, expected, fixtures)
    if task == "audio-classification":
        return check_audio_classification(client, model_id, expected, fixtures)
    if task == "text-to-speech":
        return check_text_to_speech(client, model_id, expected)
    if task == "text-to-image":
        return check_text_to_image(client, model_id, fixtures)
    raise CheckFailed(f"{model_id}: the server serves {task} and this script has no check for it; add one")


def http_error(call):
    """The (status, JSON body) of the HfHubHTTPError a call raises."""
    try:
        call()
    except HfHubHTTPError as error:
        return error.response.status_code, json.loads(error.response.text)
    raise CheckFailed("expected an HTTP error")


def check_errors(url):
    status, body = http_error(lambda: InferenceClient(base_url=f"{url}/models/org/missing").feature_extraction("x"))
    check(status == 404 and "org/missing" in body["error"] and body["error_type"] == "not_found", f"{status} {body}")
    minilm = InferenceClient(base_url=f"{url}/models/{MINILM}")
    status, body = http_error(lambda: minilm.feature_extraction("   "))
    check(status == 422 and body["error_type"] == "validation", f"{status} {body}")
    missing = InferenceClient(base_url=f"{url}/models/org/missing", provider="hf-inference")
    check(not missing.health_check(), "health of a missing model")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("url")
    parser.add_argument(
        "--fixtures",
        default=os.path.join(os.path.dirname(__file__), "..", "..", "..", "hgpt-local", "tests", "fixtures"),
    )
    args = parser.parse_args()
    url = args.url.rstrip("/")
    summary = {"client": huggingface_hub.__version__, "checked": {}, "skipped": {}}
    failures = []

    # health_check and get_endpoint_info need the provider named (the client
    # refuses them with provider=None even for a URL); inference calls do not.
    server = InferenceClient(base_url=url, provider="hf-inference")
    check(server.health_check(), "GET /health")
    info = server.get_endpoint_info()
    check(info.get("router") == "hgpt-model-server", f"/info: {info}")

    models = get_json(f"{url}/models")
    for model in models:
        model_id = model["id"]
        client = InferenceClient(base_url=f"{url}/models/{model_id}")
        endpoint = InferenceClient(base_url=f"{url}/models/{model_id}", provider="hf-inference")
        try:
            check(endpoint.health_check(), f"{model_id}: health_check")
            check(endpoint.get_endpoint_info().get("model_id") == model_id, f"{model_id}: get_endpoint_info")
            summary["checked"][model_id] = run_checks(client, model, args.fixtures, url)
        except HfHubHTTPError as error:
            body = {}
            try:
                body = json.loads(error.response.text)
            except ValueError:
                pass
            if error.response.status_code == 400 and body.get("error_type") == "unsupported":
                summary["skipped"][model_id] = body.get("error", "unsupported")
            else:
                failures.append(f"{model_id}: {error}")
        except Exception:  # noqa: BLE001 - every failure is reported, then the script fails
            failures.append(f"{model_id}: {traceback.format_exc()}")

    served = {m["id"] for m in models}
    for name in sorted(os.listdir(args.fixtures)):
        model_id = FIXTURE_PREFIX + name
        if os.path.isfile(os.path.join(args.fixtures, name, "config.json")) and model_id not in served:
            summary["skipped"][model_id] = "not served (no local pipeline for its task yet)"

    try:
        check_errors(url)
    except Exception:  # noqa: BLE001
        failures.append(f"error answers: {traceback.format_exc()}")

    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    print(json.dumps(summary, sort_keys=True))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
