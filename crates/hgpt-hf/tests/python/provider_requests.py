"""Send one request per case with the official huggingface_hub InferenceClient
to a loopback fake of the Hub and the router, so the Rust test can compare
hgpt's requests with the client's.

Usage: provider_requests.py URL CASES_JSON

Before each case the script requests GET {URL}/marker/{index}, so the fake's
log can be split by case. Errors of a case (the fake does not answer every
follow-up the client makes) are printed and do not stop the script: only the
requests matter.
"""

import json
import sys
import urllib.error
import urllib.request

url = sys.argv[1].rstrip("/")
with open(sys.argv[2]) as f:
    cases = json.load(f)

from huggingface_hub import InferenceClient, constants  # noqa: E402
from huggingface_hub.inference import _providers  # noqa: E402

# Route every provider to the fake router. hf-inference computed its base URL
# when the module was imported.
constants.INFERENCE_PROXY_TEMPLATE = url + "/{provider}"
for helper in _providers.PROVIDERS["hf-inference"].values():
    helper.base_url = f"{url}/hf-inference"


def marker(index):
    try:
        urllib.request.urlopen(f"{url}/marker/{index}")
    except urllib.error.HTTPError:
        pass


def read(path):
    with open(path, "rb") as f:
        return f.read()


for index, case in enumerate(cases):
    marker(index)
    client = InferenceClient(provider=case["provider"], api_key="hf_test")
    task, model = case["task"], case["model"]
    text, params = case.get("text"), case.get("params", {})
    try:
        if task == "text-to-image":
            client.text_to_image(text, model=model, **params)
        elif task == "text-to-speech":
            client.text_to_speech(text, model=model)
        elif task == "text-to-video":
            client.text_to_video(text, model=model)
        elif task == "image-to-image":
            client.image_to_image(read(case["image"]), prompt=text, model=model)
        elif task == "automatic-speech-recognition":
            client.automatic_speech_recognition(read(case["audio"]), model=model)
        elif task == "object-detection":
            client.object_detection(read(case["image"]), model=model)
        else:
            raise SystemExit(f"unknown task {task}")
    except Exception as e:  # the requests are what is compared
        print(f"case {index} ({case['provider']} {task}): {type(e).__name__}: {e}", file=sys.stderr)
marker(len(cases))
