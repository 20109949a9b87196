"""The service behind every endpoint: plain data in and out, shared by the REST routes (server.py) and the Gradio
page (views.py turns its answers into what components show, ui.py wires them).

Requests come from anyone on the internet, so every input is checked here: file references must name uploads
(classifier.security.uploaded_file), images are decoded by our code under the limits of `Limits`, and a refusal is a
ServiceError whose message we wrote (the only kind of message that reaches a client). Every request is timed and
recorded in the monitor in one place, App.recorded.
"""
from __future__ import annotations

import csv
import logging
import shlex
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone

from PIL import Image

from .explain import ExplainError
from .flagging import FlagStore, TooManyFlags
from .images import BadImageError, open_rgb, pixels_to_decode
from .monitor import RequestMonitor
from .predict import Predictor, Sample
from .report import CALIBRATION_NAME, CONFUSION_NAME, CURVES_NAME, METRIC_ROWS, no_better_than_guessing
from .security import Limits, TempFolder, UploadError, csv_cell, public_name, uploaded_file

ALL_CLASSES = "all classes"
log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A request the service refuses. The message is for the caller (REST sends it as {"error": message}, the page
    shows it), `status` is its HTTP status on REST."""
    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
        # the caller's mistake, not a fault of the server: one log line, no traceback
        log.info("refused (%s): %s", type(self).__name__, message)


class UnknownModel(ServiceError):
    status = 404


class BadUpload(ServiceError):
    status = 422


class Throttled(ServiceError):
    status = 429


@dataclass(frozen=True)
class Endpoint:
    """One action of the service: its Gradio API name and, where it has one, its REST route ("GET /api/..."),
    declared once here so the two cannot drift. ui.py wires the Gradio events by `api_name` to the App method of
    that name; server.py builds the GET routes from `rest` on the same method, and POST /api/classify calls
    App.classify, the core App.predict runs too (REST sends the image's bytes, not an uploaded file's path)."""
    api_name: str
    rest: str | None
    summary: str


ENDPOINTS = {e.api_name: e for e in (
    Endpoint("predict", "POST /api/classify", "one image -> top-k labels and probabilities"),
    Endpoint("explain", None, "one image -> a heatmap of where the model looked for a class, and its details"),
    Endpoint("flag", None, "an image and its right class -> kept for the model's owner (where the app collects them)"),
    Endpoint("classify_batch", None, "many images -> a table and a CSV"),
    Endpoint("samples", None, "a model's gallery images of one class (or all), captioned"),
    Endpoint("model_info", "GET /api/model_info", "classes, input size, metrics, training command"),
    Endpoint("stats", "GET /api/stats", "request counts, errors, latency, predicted-class histogram"),
)}
# the app refuses images above this many decoded pixels (8000x8000); a JPEG counts at the 1/2, 1/4 or 1/8 scale it
# is decoded at, so large camera JPEGs still pass. The model sees at most a few hundred pixels a side.
UPLOAD_MAX_PIXELS = 64_000_000
# model calls at once over every Gradio event and REST request (a batch takes at most one of these places; ui.py
# wires the events' queues so that they wait there, App.model_calls holds the places); REST requests also have a
# limit on how many may be in flight at all (Limits.rest_in_flight)
MODEL_CALLS = 2


class Places:
    """At most `n` holders at once, taken in the order they were asked for (threading.Semaphore lets a newcomer
    take a place that a waiting thread was woken for, so a steady stream of predictions could hold a batch back)."""

    def __init__(self, n: int):
        self.n, self._held, self._waiting = n, 0, deque()
        self._changed = threading.Condition()

    @contextmanager
    def __call__(self):
        ticket = object()
        with self._changed:
            self._waiting.append(ticket)
            self._changed.wait_for(lambda: self._waiting[0] is ticket and self._held < self.n)
            self._waiting.popleft()
            self._held += 1
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                self._held -= 1
                self._changed.notify_all()


@dataclass
class Outcome:
    """What a request's handler learnt, for the monitor's record of it."""
    model: str | None = None
    top1: str | None = None
    image_size: tuple | None = None


@dataclass
class Classification:
    """One image's answer: REST's body (server.Classification) and /predict's Details are `as_dict()`."""
    model: str
    predictions: list[tuple[str, float]]  # the top-k (label, probability), the most likely first
    low_confidence: bool
    inference_ms: float  # rounded once, to 0.01 ms, so the page's text and the data can never disagree
    image_size: tuple[int, int]
    input_size: int  # the model's input (the page says it), not part of the answer's data

    def as_dict(self) -> dict:
        return {"model": self.model, "predictions": [{"label": label, "probability": p} for label, p in self.predictions],
                "low_confidence": self.low_confidence, "inference_ms": self.inference_ms,
                "image_size": list(self.image_size)}


@dataclass
class Explanation:
    """Where a model looked for one class of an image: the decoded image, its heatmap (the same size) and the class."""
    image: Image.Image
    heatmap: Image.Image
    label: str
    probability: float
    low_confidence: bool
    model: str

    def as_dict(self) -> dict:
        """/explain's details."""
        return {"class": self.label, "probability": self.probability, "model": self.model,
                "low_confidence": self.low_confidence}


class App:
    """The service: `predictors` maps a model name to its Predictor. Every public method is one request (or a
    helper for one) and returns plain data; refusals raise ServiceError."""

    def __init__(self, predictors: dict[str, Predictor], monitor: RequestMonitor, limits: Limits = Limits(),
                 flags: FlagStore | None = None):
        self.predictors, self.monitor, self.limits = predictors, monitor, limits
        self.flags = flags  # where visitors' corrections go; None: the app collects none
        self.batch_folder = TempFolder("classifier-batch", limits.temp_age_s)
        self._sample_predictions: dict[str, list] = {}
        self._samples_lock = threading.Lock()
        # A decode holds a full-size image for a moment: a fixed pool bounds how many run at once, and so that
        # memory. A pool rather than a semaphore: glibc gives each thread its own malloc arena and keeps freed
        # memory there, so decodes spread over many request threads left up to a full-size image resident in each
        # (10 concurrent 64 MP REST uploads: +931 MB peak with a semaphore, measured; see docs/PERFORMANCE.md).
        self._decoders = ThreadPoolExecutor(limits.concurrent_decodes, thread_name_prefix="decode")
        self.model_calls = Places(MODEL_CALLS)

    @contextmanager
    def recorded(self, endpoint: str, model: str | None):
        """Times the request inside and records it in the monitor under `endpoint`: a refusal (ServiceError) as an
        error, since every error a user or client is answered counts; otherwise with what the handler put in the
        Outcome it is given. The time includes waiting for a place among the model calls: what the caller waited."""
        outcome, start = Outcome(), time.perf_counter()
        try:
            yield outcome
        except ServiceError as e:
            name = model if isinstance(model, str) and model in self.predictors else None
            self.monitor.record(endpoint, 1000 * (time.perf_counter() - start), error=e.message,
                                model=name or (None if model else next(iter(self.predictors))))
            raise
        self.monitor.record(endpoint, 1000 * (time.perf_counter() - start), outcome.top1, outcome.image_size,
                            model=outcome.model)

    def predictor(self, name: str | None) -> Predictor:
        """The one place a model name is resolved, for every endpoint."""
        if not name:
            return next(iter(self.predictors.values()))
        if not isinstance(name, str) or name not in self.predictors:
            raise UnknownModel(f"Unknown model {str(name)[:100]!r}; available: {', '.join(self.predictors)}.")
        return self.predictors[name]

    @staticmethod
    def top_k(value) -> int:
        """A top-k from a request: a whole number of at least 1 (larger ones are clamped to the classes)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 1:
            shown = f"{value:g}" if isinstance(value, float) else str(value)[:20]  # REST's 0 arrives as 0.0
            raise ServiceError(f"top_k must be a whole number of at least 1, got {shown}.")
        return int(value)

    def decode(self, data: bytes, name: str, predictor: Predictor):
        """An upload's bytes -> an RGB image reduced for `predictor`'s input size; raises BadImageError."""
        if len(data) > self.limits.file_bytes:
            raise BadImageError(f"{name} is larger than {self.limits.file_bytes // 2**20} MB.")
        return self._decoders.submit(open_rgb, data, name, UPLOAD_MAX_PIXELS, predictor.input_size).result()

    def decode_upload(self, data: bytes, name: str, predictor: Predictor):
        """decode() for a request: an image that cannot be decoded is the caller's BadUpload."""
        try:
            return self.decode(data, name, predictor)
        except BadImageError as e:
            raise BadUpload(str(e)) from None

    @staticmethod
    def read_upload(image_path: str | None, what: str) -> tuple[bytes, str]:
        """The bytes of a file a user uploaded and the name messages give it; raises ServiceError."""
        if image_path is None:
            raise ServiceError("Upload an image first.")
        try:
            path = uploaded_file(image_path)
        except UploadError as e:
            raise BadUpload(str(e)) from None
        return path.read_bytes(), f"{what} {path.name!r}"

    def served_files(self) -> list[str]:
        """The files of the model folders that the page shows (gallery and failure images, the plots): the only
        ones the server may hand out. Checkpoints, logs and training records stay private."""
        files = []
        for p in self.predictors.values():
            files += [str(s.path.resolve()) for s in p.samples]
            files += [path for path in self.plots(p.name) if path]
        return files

    # -- classify
    def classify(self, data: bytes, name: str, top_k, model: str | None, endpoint: str) -> Classification:
        """An image's bytes -> its Classification (REST's POST /api/classify), recorded under `endpoint`."""
        with self.recorded(endpoint, model) as outcome:
            return self._classify(data, name, top_k, model, outcome)

    def classify_upload(self, image_path: str | None, top_k=5, model: str | None = None,
                        what: str = "The upload") -> Classification:
        """An uploaded file (the page's image, a clicked thumbnail's served copy) -> its Classification, recorded
        as a `predict` request."""
        with self.recorded("predict", model) as outcome:
            data, name = self.read_upload(image_path, what)
            return self._classify(data, name, top_k, model, outcome)

    def _classify(self, data: bytes, name: str, top_k, model: str | None, outcome: Outcome) -> Classification:
        predictor, k = self.predictor(model), self.top_k(top_k)
        with self.model_calls():
            top, inference_ms, size = predictor.classify(self.decode_upload(data, name, predictor), k)
        outcome.model, outcome.top1, outcome.image_size = predictor.name, top[0][0], size
        return Classification(predictor.name, top, predictor.low_confidence(top[0][1]), round(inference_ms, 2), size,
                              predictor.input_size)

    def explain(self, image_path: str | None, class_name: str | None = None, model: str | None = None,
                what: str = "The upload") -> Explanation:
        """An uploaded file -> where the model looked for `class_name` (default: its top class), recorded as an
        `explain` request. Costs one extra backward pass, only when asked."""
        with self.recorded("explain", model) as outcome:
            predictor = self.predictor(model)
            if class_name and class_name not in predictor.label_names:
                raise ServiceError(f"{str(class_name)[:100]!r} is not a class of {predictor.name}; its classes are "
                                   f"{', '.join(predictor.label_names)}.")
            data, name = self.read_upload(image_path, what)
            try:
                with self.model_calls():
                    image = self.decode_upload(data, name, predictor)
                    heatmap, index, probs = predictor.explain(
                        image, predictor.label_names.index(class_name) if class_name else None)
            except ExplainError as e:
                raise ServiceError(f"No heatmap for {predictor.name}: {e}") from None
            label = predictor.label_names[index]
            outcome.model, outcome.top1, outcome.image_size = predictor.name, label, image.size
        return Explanation(image, heatmap, label, float(probs[index]), predictor.low_confidence(float(probs.max())),
                           predictor.name)

    def flag(self, image_path: str | None, label: str | None, model: str | None = None) -> dict:
        """A visitor's correction: the uploaded image and its right class, stored for the owner's dataset with the
        model's own answer (computed again here: a client's word for it could be anything). -> what was stored."""
        with self.recorded("flag", model) as outcome:
            if self.flags is None:
                raise ServiceError("This app does not collect corrections: its owner has not named a dataset for "
                                   "them (FLAG_DATASET).")
            predictor = self.predictor(model)
            if label not in predictor.label_names:
                raise ServiceError(f"Choose the right class among {predictor.name}'s: "
                                   f"{', '.join(predictor.label_names)} (got {str(label)[:100]!r}).")
            data, name = self.read_upload(image_path, "The upload")
            with self.model_calls():
                image = self.decode_upload(data, name, predictor)
                top, _, size = predictor.classify(image, 1)
            record = {"label": label, "model": predictor.name, "predicted": top[0][0],
                      "probability": round(top[0][1], 6),
                      "flagged_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            try:
                file_name = self.flags.add(image, record)
            except TooManyFlags as e:
                raise Throttled(str(e)) from None
            outcome.model, outcome.image_size = predictor.name, size  # not an answer anyone asked for: no top1
        return {"file_name": file_name, "dataset": self.flags.repo_id, **record}

    # -- the model's own images
    def _predicted_samples(self, predictor: Predictor) -> list[tuple[Sample, list]]:
        """(sample, its top-3) for the model's shipped samples, computed once per model."""
        with self._samples_lock:
            if predictor.name not in self._sample_predictions:
                images = [open_rgb(str(s.path)) for s in predictor.samples]
                with self.model_calls():
                    tops = predictor.classify_many(images, k=3) if images else []
                self._sample_predictions[predictor.name] = list(zip(predictor.samples, tops))
            return self._sample_predictions[predictor.name]

    def gallery(self, model: str | None = None, class_name: str = ALL_CLASSES) -> list[tuple[Sample, list]]:
        """A model's gallery images of one class (or all), with their top-3; not counted (a page shows the first
        model's, a model switch the new one's: the user asked for neither)."""
        return [(sample, top) for sample, top in self._predicted_samples(self.predictor(model))
                if sample.kind == "gallery" and class_name in (ALL_CLASSES, None, "", sample.label)]

    def samples(self, class_name: str = ALL_CLASSES, model: str | None = None) -> list[tuple[Sample, list]]:
        """The gallery for a class filter someone chose, counted as a `samples` request."""
        with self.recorded("samples", model) as outcome:
            predictor = self.predictor(model)
            if class_name not in (ALL_CLASSES, None, "", *predictor.label_names):
                raise ServiceError(f"{str(class_name)[:100]!r} is not a class of {predictor.name}; its classes are "
                                   f"{', '.join(predictor.label_names)} (or {ALL_CLASSES!r}).")
            outcome.model = predictor.name
            return self.gallery(predictor.name, class_name)

    def failures(self, model: str | None = None) -> list[tuple[Sample, list]]:
        """The model's shipped misclassified test images, with their top-3."""
        return [(sample, top) for sample, top in self._predicted_samples(self.predictor(model))
                if sample.kind == "failure"]

    def examples(self, model: str | None = None) -> list[str]:
        """The Classify tab's examples: a model's first gallery image of each of its classes, in the classes'
        order (a first visit is one click from an answer); not counted."""
        first = {}
        for sample in self.predictor(model).samples:
            if sample.kind == "gallery":
                first.setdefault(sample.label, str(sample.path))
        return [first[name] for name in self.predictor(model).label_names if name in first]

    def plots(self, model: str | None = None) -> list[str | None]:
        """The paths of the model's confusion matrix, reliability diagram and training curves (None if absent)."""
        folder = self.predictor(model).folder
        return [str((folder / name).resolve()) if (folder / name).is_file() else None
                for name in (CONFUSION_NAME, CALIBRATION_NAME, CURVES_NAME)]

    # -- batch
    def classify_batch(self, files: list[str] | None, top_k: int = 5, model: str | None = None):
        """Many uploaded files -> (rows [file, top1, confidence, top_k], the path of the same as CSV)."""
        with self.recorded("classify_batch", model) as outcome:
            predictor, k, paths = self._batch_request(files, top_k, model)
            with self.model_calls():
                rows, tops = self._classify_batch(predictor, k, paths)
            outcome.model, outcome.top1 = predictor.name, tops[0][0][0] if tops else None
        return rows, self._write_csv(rows)

    def _batch_request(self, files, top_k, model):
        """A batch's checked request: (predictor, k, the upload paths); raises ServiceError."""
        if not files:
            raise ServiceError("Choose one or more image files.")
        limits = self.limits
        if len(files) > limits.batch_files:
            raise ServiceError(f"{len(files)} files in one batch; at most {limits.batch_files} are classified per "
                               "request. Send them in several batches.")
        predictor, k = self.predictor(model), self.top_k(top_k)
        try:
            return predictor, k, [uploaded_file(f) for f in files]
        except UploadError as e:
            raise BadUpload(str(e)) from None

    def _classify_batch(self, predictor: Predictor, k: int, paths: list):
        limits = self.limits
        # each image is reduced as soon as it is decoded, so the batch holds small images only
        images, rows, pixels = {}, [None] * len(paths), 0
        for i, path in enumerate(paths):
            try:
                data = path.read_bytes()
                pixels += pixels_to_decode(data, predictor.input_size)
                if pixels > limits.batch_pixels:
                    raise BadImageError(f"skipped: the images of one request may hold {limits.batch_pixels // 10**6} "
                                        "megapixels in all; send the rest in another batch.")
                images[i] = self.decode(data, path.name, predictor)
            except BadImageError as e:
                rows[i] = [path.name, "", None, f"error: {e}"]
        tops = predictor.classify_many(list(images.values()), k)
        for i, top in zip(images, tops):
            rows[i] = [paths[i].name, top[0][0], round(top[0][1], 4), ", ".join(f"{label} {p:.3f}" for label, p in top)]
        return rows, tops

    def _write_csv(self, rows: list) -> str:
        csv_path = self.batch_folder.new("batch-") / "predictions.csv"
        with csv_path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "top1", "confidence", "top_k"])
            writer.writerows([csv_cell(cell) for cell in row] for row in rows)
        return str(csv_path)

    # -- about and monitoring
    def model_info(self, model: str | None = None) -> dict:
        """A served model's card as data: its classes, input size, metrics on its final split, calibration, the
        command that trained it, and a warning where it is no better than guessing.

        Args:
            model: which served model (default: the first one).
        """
        p = self.predictor(model)
        final = p.metrics.get("final", {})
        return {
            "name": p.name,
            "architecture": p.loaded.config.get("architecture"),
            "label_names": p.label_names,
            "input_size": p.input_size,
            "test_time_augmentation": p.loaded.tta,
            "metrics_split": p.metrics.get("final_split"),
            "metrics": {key: final.get(key) for key, _ in METRIC_ROWS if key in final},
            "temperature": p.loaded.temperature,
            "low_confidence_threshold": p.loaded.low_confidence_threshold,
            "calibration": ({when: {k: final["calibration"][when][k] for k in ("ece", "nll")} for when in ("before", "after")}
                            if "calibration" in final else None),
            "training_command": public_command(p.training_args.get("command")),
            "dataset": public_name(p.training_args.get("dataset")),
            # scratch, file:<name> or hf-hub:<repo>@<revision> (fine-tuned from the Hub's weights)
            "starting_weights": p.training_args.get("weights_source"),
            # a model no better than answering its commonest class: visitors should know before they trust it
            "warning": (no_better_than_guessing(final, p.metrics.get("final_split", "test"))
                        if "per_class" in final else "") or None,
        }

    def stats(self) -> dict:
        """Requests since the server started: counts and errors per endpoint, latency percentiles, and how often
        each class was the answer."""
        return self.monitor.stats()


def public_command(command: str | None) -> str | None:
    """The training command without `--output-dir` (where the training machine wrote) and with local paths
    shortened to `.../<last part>` (the "..." keeps `.../cifar10` from reading as the preset `cifar10`); what is left
    says how to train the same model."""
    if not command:
        return command
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    shown, skip = [], False
    for word in words:
        if skip:
            skip = False
            continue
        if word == "--output-dir":
            skip = True
            continue
        if word.startswith("--output-dir="):
            continue
        shown.append(f".../{public_name(word)}" if word.startswith(("/", "~", "./", "../")) else word)
    return shlex.join(shown)
