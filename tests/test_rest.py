"""The REST layer of a real server: every error it documents (docs/APP.md's table) is what a client gets, in the
one {"error": ...} shape, and the answers' schemas are published at /openapi.json."""
import io
import json
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from classifier.monitor import RequestMonitor
from classifier.predict import _torch_thread, bundled_model_folders, load_predictors
from classifier.security import Limits
from classifier.server import create_app
from classifier.service import App
from .helpers import serve

pytestmark = pytest.mark.slow  # a real server each

MB = 2**20
DOCS = Path(__file__).parents[1] / "docs" / "APP.md"


def documented_errors() -> list[tuple[int, re.Pattern]]:
    """docs/APP.md's REST error table: (status, the message as a pattern, `…` matching anything)."""
    text = DOCS.read_text()
    table = text[text.index("<!-- rest-errors"):text.index("<!-- /rest-errors -->")]
    rows = []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 3 and cells[0].isdigit():
            message = re.search(r"`([^`]+)`", cells[2]).group(1)
            rows.append((int(cells[0]), re.compile(".*".join(map(re.escape, message.split("…"))) + r"\Z", re.S)))
    return rows


def png(size=(40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def served_app(limits=Limits()) -> App:
    predictors, _ = load_predictors(str(bundled_model_folders()[0]))
    return App(predictors, RequestMonitor(), limits)


def half_sent_upload(base: str) -> socket.socket:
    """A POST /api/classify whose headers announce a body that never comes (a slow or stalled client)."""
    host, port = base.split("//")[1].strip("/").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(f"POST /api/classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                 f"Content-Length: 100000\r\n\r\n--x\r\n".encode())
    return sock


def holding_the_slot(base: str) -> socket.socket:
    """A stalled upload that the server took in: one that gets no answer (a slot is freed just after the previous
    request's answer went out, so one sent at once may still be refused)."""
    for _ in range(20):
        sock = half_sent_upload(base)
        sock.settimeout(0.5)
        try:
            sock.recv(1)
        except TimeoutError:
            sock.settimeout(10)
            return sock
        sock.close()
    raise AssertionError("every stalled upload was refused: the slot was never free")


def test_every_documented_rest_error_is_what_the_server_answers():
    documented = documented_errors()
    assert len(documented) >= 9, "docs/APP.md's REST error table was not found whole"
    seen = []  # (case, status, body)

    def check(case, response):
        body = response.json()
        assert set(body) <= {"error", "models"}, f"{case}: not the documented shape: {body}"
        seen.append((case, response.status_code, body["error"]))
        return body

    app = served_app(Limits(rest_in_flight=1, health_timeout_s=0.5))
    with serve(create_app(app)) as base:
        def classify(query="", files=None, **options):
            return httpx.post(f"{base}api/classify{query}", files=files, timeout=60, **options)

        image = {"file": ("a.png", png(), "image/png")}
        assert classify("?top_k=2", image).status_code == 200
        check("not an image", classify("", {"file": ("a.txt", b"hello", "text/plain")}))
        check("no file", classify("", {"other": ("a.png", png(), "image/png")}))
        check("top_k not a number", classify("?top_k=abc", image))
        check("top_k not whole", classify("?top_k=2.5", image))
        body = check("unknown model", classify("?model=nope", image))
        assert body["models"] == list(app.predictors)
        check("unknown model (model_info)", httpx.get(f"{base}api/model_info?model=nope"))
        check("body too large", classify("", {"file": ("big.png", b"0" * (21 * MB), "image/png")}))
        check("file too large", classify("", {"file": ("big.png", b"0" * (20 * MB + 1024), "image/png")}))

        # busy: the one slot is held by a client that never sends its body; the next client is refused at once,
        # before its own body is read (it sends none either)
        stalled = holding_the_slot(base)
        waiting = half_sent_upload(base)
        answer = waiting.recv(4096).decode()  # within the socket's 10 s, or the test fails with a timeout
        status, body = int(answer.split()[1]), answer.split("\r\n\r\n", 1)[1]
        assert "retry-after: 1" in answer.lower()
        seen.append(("busy", status, json.loads(body)["error"]))
        stalled.close()
        waiting.close()

        # wedged: the model's thread does not answer in health_timeout_s
        release = threading.Event()
        _torch_thread.submit(release.wait, 30)
        try:
            check("health, model stuck", httpx.get(f"{base}healthz", timeout=30))
        finally:
            release.set()
        deadline = time.time() + 10
        while httpx.get(f"{base}healthz").status_code != 200:
            assert time.time() < deadline, "the health check did not recover once the model answered again"
            time.sleep(0.1)

        # unexpected: a fault inside torch; the client gets the one shape, not the framework's plain text
        predictor = next(iter(app.predictors.values()))
        forward = predictor.model.forward
        predictor.model.forward = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom"))
        try:
            response = classify("", image)
            assert "boom" not in response.text
            check("unexpected", response)
        finally:
            predictor.model.forward = forward
        assert classify("", image).status_code == 200

    unmatched = [(case, status, message) for case, status, message in seen
                 if not any(status == s and pattern.match(message) for s, pattern in documented)]
    assert not unmatched, f"answers docs/APP.md does not list: {unmatched}"
    unseen = [pattern.pattern for s, pattern in documented
              if not any(status == s and pattern.match(message) for _, status, message in seen)]
    assert not unseen, f"documented errors the server never gave: {unseen}"


def test_the_answers_schemas_are_published():
    with serve(create_app(served_app())) as base:
        spec = httpx.get(f"{base}openapi.json").json()
    classify = spec["paths"]["/api/classify"]["post"]["responses"]
    assert classify["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Classification"}
    assert {"400", "404", "413", "422", "500", "503"} <= set(classify)
    schemas = spec["components"]["schemas"]
    assert set(schemas["Classification"]["properties"]) == {"model", "predictions", "low_confidence", "inference_ms",
                                                            "image_size"}
    assert schemas["Error"]["required"] == ["error"]
    assert "503" in spec["paths"]["/healthz"]["get"]["responses"]
