"""Raw REST calls on the launched app (no gradio_client): a /caption with only the image
gets the documented defaults, a short call elsewhere names what it lacks, and bad values
are named by field, all as plain text."""

from __future__ import annotations

import importlib.util
import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("screenshots", ROOT / "scripts" / "screenshots.py")
shots = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(shots)

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:.*copy keyword is deprecated"),
              pytest.mark.filterwarnings("ignore:.*no_silent_downcasting")]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    demo, url = shots.start_app(n_examples=2)
    png = tmp_path_factory.mktemp("rest") / "scene.png"
    truth = shots.scene_png(3, png)
    yield url, _upload(url, png), truth
    demo.close()


def _upload(url: str, png: Path) -> dict:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename="
            f"\"{png.name}\"\r\nContent-Type: image/png\r\n\r\n").encode() + \
        png.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "gradio_api/upload", data=body, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    (path,) = json.loads(urllib.request.urlopen(req).read())
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def call(url: str, api: str, data: list) -> tuple[str, object]:
    """('complete', outputs) or ('error', message) of POST /gradio_api/call/<api>."""
    req = urllib.request.Request(url + f"gradio_api/call/{api}",
                                 data=json.dumps({"data": data}).encode(),
                                 headers={"Content-Type": "application/json"})
    event = json.loads(urllib.request.urlopen(req).read())["event_id"]
    text = urllib.request.urlopen(url + f"gradio_api/call/{api}/{event}").read().decode()
    kind = text.split("event: ")[-1].split("\n")[0].strip()
    payload = json.loads(text.split("data: ")[-1])
    return kind, (payload["error"] if kind == "error" and isinstance(payload, dict) else payload)


def test_caption_with_only_the_image_gets_the_documented_defaults(served):
    url, image, truth = served
    kind, full = call(url, "caption", [image, "greedy", 1.0, 0, 1.0, 32, 0])
    assert kind == "complete" and full == [truth]
    assert call(url, "caption", [image]) == ("complete", [truth])
    assert call(url, "caption", [image, "greedy", 1.0]) == ("complete", [truth])


def test_a_short_call_names_the_missing_fields_in_one_plain_line(served):
    url, _, _ = served
    kind, message = call(url, "caption", [])
    assert kind == "error" and "missing image" in message and "object at 0x" not in message
    assert len(message.splitlines()) == 1


def test_bad_values_are_named_by_field_in_plain_text(served):
    url, image, _ = served
    kind, message = call(url, "caption", [image, "sampling", 1.0, 0, 1.0, 32, 2**70])
    assert kind == "error" and "seed" in message and "&" not in message
    kind, message = call(url, "caption", [image, "sampling", 1.0, 3.5, 1.0, 32, 0])
    assert kind == "error" and "top_k" in message.replace("-", "_")
