"""What keeps the app safe on the public internet: request limits, response headers, upload checks, spreadsheet-safe
CSV cells and a janitor for temporary files. Every limit is a field of `Limits`, listed in docs/APP.md's Security section.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from gradio.utils import get_upload_folder

MB = 2**20


@dataclass(frozen=True)
class Limits:
    file_bytes: int = 20 * MB  # one uploaded file
    upload_request_bytes: int = 64 * MB  # one multipart request (the browser sends a batch's files together)
    json_request_bytes: int = 1 * MB  # any other request body: file references and parameters only
    batch_files: int = 32  # files in one /classify_batch call
    # pixels decoded per /classify_batch call; a JPEG counts at the reduced scale it is decoded at (classifier.images)
    batch_pixels: int = 256_000_000
    concurrent_decodes: int = 2  # images decoding at once, over every endpoint: a 2-core machine runs no more
    rest_in_flight: int = 16  # REST requests being served at once; beyond that, 503 "busy, retry"
    queue_size: int = 64  # Gradio requests waiting; beyond that Gradio answers "queue is full"
    health_timeout_s: float = 10.0  # /healthz fails when the model's thread has not answered in this long
    temp_age_s: int = 3600  # uploads, outputs and batch CSVs are deleted this long after they were written
    cleanup_every_s: int = 600


class UploadError(ValueError):
    """A file reference that does not name a file a user uploaded to this server."""


def uploaded_file(path: str) -> Path:
    """`path` as Gradio handed it to an event, checked to be a regular file inside Gradio's upload folder. Gradio
    itself checks this only for apps it launched, not for one mounted into FastAPI; checking here as well means a
    request naming a server file (/etc/passwd, a model's files, /dev/zero) is refused without the file being opened,
    and without saying whether it exists."""
    refused = UploadError("The image reference does not name a file uploaded to this server; upload the file itself.")
    folder = Path(get_upload_folder()).resolve()
    try:
        resolved = Path(path).resolve()
        if not resolved.is_relative_to(folder) or not stat.S_ISREG(os.stat(resolved).st_mode):
            raise refused
    except (OSError, ValueError, RuntimeError):
        raise refused from None
    return resolved


def public_name(value: str | None) -> str | None:
    """A dataset or model reference as the public may see it: a Hub id as it is, a local path by its last part
    (the training machine's folders are nobody's business)."""
    if not value:
        return value
    looks_local = value.startswith((".", "/", "~")) or "\\" in value or value.count("/") > 1 or Path(value).exists()
    return Path(value.rstrip("/")).name if looks_local else value


def csv_cell(value):
    """A spreadsheet opens a cell starting with = + - @ (or a tab or carriage return before one) as a formula; a
    leading apostrophe makes it text again (OWASP's advice for CSV injection). Numbers stay numbers."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


class TempFolder:
    """A folder of per-request temporary files whose entries are deleted `age_s` after they were made."""

    def __init__(self, name: str, age_s: int):
        self.root = Path(tempfile.gettempdir()) / name
        self.age_s = age_s

    def new(self, prefix: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.root))

    def clean(self) -> int:
        """Remove entries older than `age_s`; returns how many went."""
        if not self.root.is_dir():
            return 0
        cutoff, removed = time.time() - self.age_s, 0
        for entry in self.root.iterdir():
            try:
                if entry.lstat().st_mtime < cutoff:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


def start_janitor(folders: list[TempFolder], every_s: float) -> threading.Event:
    """Clean `folders` every `every_s` seconds in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()

    def loop():
        while not stop.wait(every_s):
            for folder in folders:
                folder.clean()

    threading.Thread(target=loop, name="temp-janitor", daemon=True).start()
    return stop


class Busy:
    """A non-blocking counter of requests in flight: `try_enter` says no once `limit` are being served, so an
    overloaded server answers "busy, retry" at once instead of queueing work (and memory) without end."""

    def __init__(self, limit: int):
        self._slots = threading.BoundedSemaphore(limit)

    def try_enter(self) -> bool:
        return self._slots.acquire(blocking=False)

    def leave(self) -> None:
        self._slots.release()


# -- ASGI middleware (plain ASGI, not BaseHTTPMiddleware, which would buffer Gradio's streamed responses)

def _header(scope, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == name), None)


async def _send_json(send, status: int, message: str, headers: tuple = ()) -> None:
    import json

    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


class InFlightLimit:
    """At most `limit` requests to `path` at once; one more is answered 503 "busy, retry" before its body is read,
    so an overloaded server neither queues work without end nor receives and spools uploads it will not serve."""

    def __init__(self, app, path: str, limit: int):
        self.app, self.path, self.busy = app, path, Busy(limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        if not self.busy.try_enter():
            return await _send_json(send, 503, "The server is busy; retry in a moment.", ((b"retry-after", b"1"),))
        try:
            await self.app(scope, receive, send)
        finally:
            self.busy.leave()


class BodySizeLimit:
    """Refuse request bodies over their route's limit: at once from Content-Length, before anything is read; for a
    chunked body, as soon as the bytes received pass the limit, so an oversized body is never stored. `routes`
    maps path prefixes to limits (the first match wins); every other body gets `default_bytes`."""

    def __init__(self, app, routes: list[tuple[str, int]], default_bytes: int):
        self.app, self.routes, self.default_bytes = app, routes, default_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = next((n for prefix, n in self.routes if scope["path"].startswith(prefix)), self.default_bytes)
        too_large = f"Request body over {limit / MB:.0f} MB." if limit >= MB else f"Request body over {limit} bytes."
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await _send_json(send, 413, too_large)

        received, refused, started = 0, False, False

        async def counted_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    if not started:
                        await _send_json(send, 413, too_large)
                    return {"type": "http.disconnect"}  # the app stops reading; the rest is never stored
            return message

        async def guarded_send(message):
            nonlocal started
            if refused:
                return  # our 413 went out; whatever the app answers to the disconnect is dropped
            started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not refused:
                raise


class SecurityHeaders:
    """Headers on every response: no MIME sniffing (a file served as text never runs as HTML or script), and
    `frame-ancestors` so only the listed sites may embed the app (a Space is shown inside huggingface.co)."""

    def __init__(self, app, frame_ancestors: str):
        self.app = app
        self.headers = [(b"x-content-type-options", b"nosniff"),
                        (b"content-security-policy", f"frame-ancestors {frame_ancestors}".encode()),
                        (b"referrer-policy", b"strict-origin-when-cross-origin")]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [h for h in self.headers if h[0] not in names]
            await send(message)

        await self.app(scope, receive, send_with_headers)


FRAME_ANCESTORS = "'self' https://huggingface.co https://*.hf.space"
