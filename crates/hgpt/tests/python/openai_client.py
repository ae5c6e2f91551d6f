"""The official `openai` Python client against `hgpt serve`.

Usage: openai_client.py BASE_URL TOKEN EXPECTED_ANSWER

Checks, with the pinned PyPI client: the model list, a non-streaming chat
completion (answer, the `hgpt` extra field, the run id header), a streaming
one (deltas add up to the answer; the run id and plan travel in the chunks),
and the errors it raises for an unknown model and a wrong token. Prints one
JSON line of what it saw; exits non-zero on the first failed check.
"""

import json
import sys

import openai


def main() -> None:
    base_url, token, expected = sys.argv[1], sys.argv[2], sys.argv[3]
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=token, max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "describe /a.jpg and read it aloud"}]

    models = [m.id for m in client.models.list()]
    assert models == ["hugginggpt"], models

    raw = client.chat.completions.with_raw_response.create(model="hugginggpt", messages=messages)
    run_id = raw.headers.get("x-hgpt-run-id")
    completion = raw.parse()
    answer = completion.choices[0].message.content
    assert answer == expected, answer
    assert completion.choices[0].finish_reason == "stop"
    extra = completion.model_extra["hgpt"]
    assert extra["run_id"] == run_id, (extra["run_id"], run_id)
    assert len(extra["plan"]) >= 2, extra
    assert all(t["status"] == "ok" for t in extra["tasks"]), extra["tasks"]

    stream = client.chat.completions.create(model="hugginggpt", messages=messages, stream=True)
    pieces, stream_run_ids, plans, finish = [], set(), [], None
    for chunk in stream:
        extra = (chunk.model_extra or {}).get("hgpt") or {}
        if "run_id" in extra:
            stream_run_ids.add(extra["run_id"])
        if extra.get("plan"):
            plans.append(extra["plan"])
        choice = chunk.choices[0]
        if choice.delta.content:
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason
    streamed = "".join(pieces)
    assert streamed == expected, streamed
    assert finish == "stop", finish
    assert len(stream_run_ids) == 1 and run_id not in stream_run_ids, stream_run_ids
    assert plans and len(plans[0]) >= 2, plans

    try:
        client.chat.completions.create(model="gpt-4o", messages=messages)
        raise AssertionError("an unknown model was accepted")
    except openai.NotFoundError as error:
        assert error.code == "model_not_found", error

    wrong = openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0)
    try:
        wrong.models.list()
        raise AssertionError("a wrong token was accepted")
    except openai.AuthenticationError:
        pass

    print(json.dumps({"openai": openai.__version__, "answer": answer, "streamed_chunks": len(pieces),
                      "run_ids": [run_id, *stream_run_ids]}))


if __name__ == "__main__":
    main()
