"""The service behind every endpoint: the Gradio events and the REST route call these handlers and nothing else.

Requests come from anyone on the internet, so every input is checked here: file references must name uploads
(classifier.security.uploaded_file), images are decoded by our code under the limits of `Limits`, and only messages
we wrote (gr.Error) reach a client.
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

import gradio as gr

from .explain import ExplainError
from .images import BadImageError, open_rgb, pixels_to_decode
from .monitor import RequestMonitor
from .predict import Predictor
from .report import CALIBRATION_NAME, CONFUSION_NAME, CURVES_NAME, METRIC_ROWS
from .security import Limits, TempFolder, UploadError, csv_cell, public_name, uploaded_file

ALL_CLASSES = "all classes"
log = logging.getLogger(__name__)


class ServiceError(gr.Error):
    """A request the service refuses. The message is for the caller (Gradio shows it; REST sends it as
    {"error": message}), `status` is its HTTP status on REST."""
    status = 400

    def __init__(self, message: str):
        # the caller's mistake, not a fault of the server: one log line, not Gradio's traceback for each
        super().__init__(message, print_exception=False)
        log.info("refused (%s): %s", type(self).__name__, message)


class UnknownModel(ServiceError):
    status = 404


class BadUpload(ServiceError):
    status = 422


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
    Endpoint("classify_batch", None, "many images -> a table and a CSV"),
    Endpoint("samples", None, "a model's gallery images of one class (or all), captioned"),
    Endpoint("model_info", "GET /api/model_info", "classes, input size, metrics, training command"),
    Endpoint("stats", "GET /api/stats", "request counts, errors, latency, predicted-class histogram"),
)}
# the app refuses images above this many decoded pixels (8000x8000); a JPEG counts at the 1/2, 1/4 or 1/8 scale it
# is decoded at, so large camera JPEGs still pass. The model sees at most a few hundred pixels a side.
UPLOAD_MAX_PIXELS = 64_000_000
# Gradio events that run a model, all of them together, at once (a batch takes at most one of these places; ui.py
# wires the events' queues, App.model_calls holds the places); REST requests have their own limit (Limits)
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


class App:
    """Handlers shared by the UI and the API; `predictors` maps a model name to its Predictor."""

    def __init__(self, predictors: dict[str, Predictor], monitor: RequestMonitor, limits: Limits = Limits()):
        self.predictors, self.monitor, self.limits = predictors, monitor, limits
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
    def counted(self, endpoint: str, model: str | None):
        """Records a refusal (ServiceError) raised inside as an error of `endpoint`: every error a user or client
        is answered counts, refused requests included. Successful requests are recorded by the handler."""
        start = time.perf_counter()
        try:
            yield
        except ServiceError as e:
            name = model if isinstance(model, str) and model in self.predictors else None
            if not model:
                name = next(iter(self.predictors))
            self.monitor.record(endpoint, 1000 * (time.perf_counter() - start), error=e.message, model=name)
            raise

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

    def served_files(self) -> list[str]:
        """The files of the model folders that the page shows (gallery and failure images, the plots): the only
        ones the server may hand out. Checkpoints, logs and training records stay private."""
        files = []
        for p in self.predictors.values():
            files += [str(s.path.resolve()) for s in p.samples]
            files += [str((p.folder / name).resolve()) for name in (CONFUSION_NAME, CALIBRATION_NAME, CURVES_NAME)
                      if (p.folder / name).is_file()]
        return files

    # -- classify
    def predict(self, image_path: str | None, top_k: int = 5, model: str | None = None):
        """Classify an image: the most likely classes and their probabilities (the Classify tab; REST's
        POST /api/classify answers the details alone).

        Args:
            image_path: the image (PNG, JPEG, GIF, WebP, BMP, TIFF...).
            top_k: how many classes to return, the most likely first.
            model: which served model answers (default: the first one).
        Returns:
            {label: probability}, a one-line summary, and the details with REST's names: {"model", "predictions":
            [{"label", "probability"}], "low_confidence", "inference_ms", "image_size"}.
        """
        with self.counted("predict", model):
            if image_path is None:
                raise ServiceError("Upload an image first.")
            try:
                path = uploaded_file(image_path)
            except UploadError as e:
                raise BadUpload(str(e)) from None
            data = path.read_bytes()
        with self.model_calls():
            top, inference_ms, size, predictor = self.classify(data, f"The upload {path.name!r}", top_k, model,
                                                               "predict")
        return dict(top), summary(top, inference_ms, size, predictor), details(top, inference_ms, size, predictor)

    def _heatmap(self, predictor: Predictor, image_path: str, what: str, class_index: int | None = None):
        """An uploaded image's heatmap for `class_index` (default: the top class), recorded as an `explain`
        request. -> (heatmap, class index, probabilities, the decoded image); raises ServiceError."""
        start = time.perf_counter()
        try:
            path = uploaded_file(image_path)
            with self.model_calls():
                image = self.decode(path.read_bytes(), f"{what} {path.name!r}", predictor)
                heatmap, index, probs = predictor.explain(image, class_index)
        except (BadImageError, UploadError) as e:
            raise BadUpload(str(e)) from None
        except ExplainError as e:
            raise ServiceError(f"No heatmap for {predictor.name}: {e}") from None
        self.monitor.record("explain", 1000 * (time.perf_counter() - start), predictor.label_names[index],
                            image.size, model=predictor.name)
        return heatmap, index, probs, image

    def explain(self, image_path: str | None, class_name: str | None = None, model: str | None = None):
        """Where the model looked: a Grad-CAM heatmap over the image for one class. Costs one extra backward
        pass, only when asked.

        Args:
            image_path: the image (PNG, JPEG, GIF, WebP, BMP, TIFF...).
            class_name: the class to explain (default: the model's top class for this image).
            model: which served model answers (default: the first one).
        Returns:
            the heatmap image, and {"class", "probability", "low_confidence", "model"}.
        """
        with self.counted("explain", model):
            if image_path is None:
                raise ServiceError("Upload an image first.")
            predictor = self.predictor(model)
            if class_name and class_name not in predictor.label_names:
                raise ServiceError(f"{str(class_name)[:100]!r} is not a class of {predictor.name}; its classes are "
                                   f"{', '.join(predictor.label_names)}.")
            index = predictor.label_names.index(class_name) if class_name else None
            heatmap, index, probs, image = self._heatmap(predictor, image_path, "The upload", index)
        name = predictor.label_names[index]
        return heatmap, {"class": name, "probability": float(probs[index]), "model": predictor.name,
                         "low_confidence": predictor.low_confidence(float(probs.max()))}

    def classify(self, data: bytes, name: str, top_k, model: str | None, endpoint: str):
        """An upload's bytes -> (top-k, milliseconds, image size, predictor), recorded in the monitor under
        `endpoint` (refusals as errors); raises ServiceError. Gradio's /predict and REST's /api/classify both come
        here."""
        with self.counted(endpoint, model):
            predictor, k = self.predictor(model), self.top_k(top_k)
            start = time.perf_counter()
            try:
                top, inference_ms, size = predictor.classify(self.decode(data, name, predictor), k)
            except BadImageError as e:
                raise BadUpload(str(e)) from None
        self.monitor.record(endpoint, 1000 * (time.perf_counter() - start), top[0][0], size, model=predictor.name)
        return top, inference_ms, size, predictor

    # -- galleries
    def _predicted_samples(self, predictor: Predictor) -> list:
        """Predictions for the model's shipped samples, computed once per model."""
        with self._samples_lock:
            if predictor.name not in self._sample_predictions:
                images = [open_rgb(str(s.path)) for s in predictor.samples]
                with self.model_calls():
                    tops = predictor.classify_many(images, k=3) if images else []
                self._sample_predictions[predictor.name] = list(zip(predictor.samples, tops))
            return self._sample_predictions[predictor.name]

    def gallery(self, model: str | None = None, class_name: str = ALL_CLASSES) -> list[tuple[str, str]]:
        """A model's gallery images of one class (or all), captioned; not counted (a page shows the first model's,
        a model switch the new one's: the user asked for neither)."""
        return [(str(sample.path), caption(sample.label, top))
                for sample, top in self._predicted_samples(self.predictor(model))
                if sample.kind == "gallery" and class_name in (ALL_CLASSES, None, "", sample.label)]

    def examples(self, model: str | None = None) -> list[str]:
        """The Classify tab's examples: a model's first gallery image of each of its classes, in the classes'
        order (a first visit is one click from an answer); not counted."""
        first = {}
        for sample in self.predictor(model).samples:
            if sample.kind == "gallery":
                first.setdefault(sample.label, str(sample.path))
        return [first[name] for name in self.predictor(model).label_names if name in first]

    def samples(self, class_name: str = ALL_CLASSES, model: str | None = None):
        """The Gallery tab's class filter and /samples: the gallery, counted as a `samples` request."""
        with self.counted("samples", model):
            predictor = self.predictor(model)
            if class_name not in (ALL_CLASSES, None, "", *predictor.label_names):
                raise ServiceError(f"{str(class_name)[:100]!r} is not a class of {predictor.name}; its classes are "
                                   f"{', '.join(predictor.label_names)} (or {ALL_CLASSES!r}).")
        start = time.perf_counter()
        items = self.gallery(predictor.name, class_name)
        self.monitor.record("samples", 1000 * (time.perf_counter() - start), model=predictor.name)
        return items

    def classify_sample(self, top_k: int, model: str | None, evt: gr.SelectData):
        """A click on a gallery thumbnail: classifies the image the click names (`evt.value`, the item as the page
        shows it), whatever the grid's filter is by now. Counted as a `predict` request."""
        with self.counted("predict", model):
            predictor, k = self.predictor(model), self.top_k(top_k)
            item = evt.value if isinstance(evt.value, dict) else {}
            image = item.get("image") if isinstance(item.get("image"), dict) else {}
            try:
                # the copy Gradio serves the page lives among the uploads; a model folder's files are not named
                path = uploaded_file(image.get("path") or "")
                with self.model_calls():
                    top, inference_ms, size = predictor.classify(
                        self.decode(path.read_bytes(), f"The image {path.name!r}", predictor), k)
            except (BadImageError, UploadError) as e:
                raise BadUpload(str(e)) from None
        self.monitor.record("predict", inference_ms, top[0][0], size, model=predictor.name)
        return dict(top), summary(top, inference_ms, size, predictor)

    def explain_sample(self, model: str | None, evt: gr.SelectData):
        """A click on a gallery or failure thumbnail: (the image, its heatmap) side by side, for the model's top
        class, and a line saying which class that is (and the true one, for a failure). Counted as `explain`."""
        with self.counted("explain", model):
            predictor = self.predictor(model)
            item = evt.value if isinstance(evt.value, dict) else {}
            image = item.get("image") if isinstance(item.get("image"), dict) else {}
            # the copy Gradio serves the page lives among the uploads; a model folder's files are not named
            heatmap, index, probs, picture = self._heatmap(predictor, image.get("path") or "", "The image")
        name = predictor.label_names[index]
        caption = str(item.get("caption") or "")
        true = caption.split("·")[0].removeprefix("true:").strip() if caption.startswith("true:") else None
        said = f"Where the model looked for **{name}** ({100 * float(probs[index]):.0f} %), its answer"
        return (picture, heatmap), said + (f"; the true class is **{true}**." if true else ".")

    def failures(self, model: str | None = None):
        predictor = self.predictor(model)
        items = [(str(sample.path), f"true: {sample.label} · " + ", ".join(f"{n} {100 * p:.0f}%" for n, p in top))
                 for sample, top in self._predicted_samples(predictor) if sample.kind == "failure"]
        plots = [predictor.folder / name for name in (CONFUSION_NAME, CALIBRATION_NAME, CURVES_NAME)]
        return items, *(str(plot) if plot.is_file() else None for plot in plots)

    # -- batch
    def classify_batch(self, files: list[str] | None, top_k: int = 5, model: str | None = None):
        with self.counted("classify_batch", model):
            predictor, k, paths = self._batch_request(files, top_k, model)
        with self.model_calls():
            return self._classify_batch(predictor, k, paths)

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
        limits, start = self.limits, time.perf_counter()
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
        csv_path = self.batch_folder.new("batch-") / "predictions.csv"
        with csv_path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "top1", "confidence", "top_k"])
            writer.writerows([csv_cell(cell) for cell in row] for row in rows)
        self.monitor.record("classify_batch", 1000 * (time.perf_counter() - start),
                            tops[0][0][0] if tops else None, model=predictor.name)
        return rows, str(csv_path)

    # -- about and monitoring
    def model_info(self, model: str | None = None) -> dict:
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
        }

    def about_markdown(self, model: str | None = None) -> str:
        info = self.model_info(model)
        values = {key: info["metrics"][key] for key, _ in METRIC_ROWS if key in info["metrics"]}
        rows = "\n".join(f"| {label} | {'n/a' if values[key] is None else format(values[key], '.4f')} |"
                         for key, label in METRIC_ROWS if key in values)
        metrics = f"| metric ({info['metrics_split']}) | value |\n|---|---|\n{rows}" if rows else "No metrics recorded."
        command = f"```\n{info['training_command']}\n```" if info["training_command"] else "not recorded"
        # what the app applies comes from config.json; metrics.json only says what it did on the final split
        calibration = info["calibration"]
        if calibration and "temperature" in self.predictor(model).loaded.config:
            before, after = calibration["before"], calibration["after"]
            metrics += (f"\n\nProbabilities are calibrated: divided by a temperature of {info['temperature']:.3g} "
                        f"(fitted on validation), which takes the expected calibration error from "
                        f"{100 * before['ece']:.2f} % to {100 * after['ece']:.2f} % on {info['metrics_split']}.")
        if info["low_confidence_threshold"] is not None:
            metrics += (f" Under {100 * info['low_confidence_threshold']:.0f} % the prediction carries a hint that the "
                        f"image may not be one of these classes.")
        flip = " · predictions average each image and its mirror" if info["test_time_augmentation"] == "flip" else ""
        size = info["input_size"]
        start = {None: "", "scratch": " · trained from scratch"}.get(info["starting_weights"],
                                                                     f" · started from `{info['starting_weights']}`")
        return (f"### {info['name']}\n`{info['architecture']}` · input {size}×{size} px{flip} · "
                f"{len(info['label_names'])} classes: {', '.join(info['label_names'])}{start}\n\n{metrics}\n\n"
                f"**Training command**\n{command}")

    def stats(self) -> dict:
        return self.monitor.stats()


def caption(true_label: str, top) -> str:
    """A gallery caption short enough to read whole on a thumbnail: "✓ cat 92 %", or "✗ cat → dog 54 %"."""
    predicted, p = top[0]
    return f"✓ {true_label} {100 * p:.0f} %" if predicted == true_label else f"✗ {true_label} → {predicted} {100 * p:.0f} %"


LOW_CONFIDENCE_HINT = "low confidence: the image may not be one of this model's classes"


def summary(top, inference_ms: float, size, predictor: Predictor) -> str:
    hint = f"\n\n⚠️ {LOW_CONFIDENCE_HINT.capitalize()}." if predictor.low_confidence(top[0][1]) else ""
    return (f"**{top[0][0]}** ({100 * top[0][1]:.1f} %) · inference {inference_ms:.1f} ms · "
            f"image {size[0]}×{size[1]} px · model `{predictor.name}` ({predictor.input_size} px input){hint}")


def details(top, inference_ms: float, size, predictor: Predictor) -> dict:
    """A classification as data, with the names of REST's answer (POST /api/classify, server.Classification)."""
    return {"model": predictor.name, "predictions": [{"label": label, "probability": p} for label, p in top],
            "low_confidence": predictor.low_confidence(top[0][1]), "inference_ms": round(inference_ms, 2),
            "image_size": list(size)}


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
