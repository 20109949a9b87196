"""The Gradio Blocks of the Space. Every action a user can take is also a named API endpoint."""
from __future__ import annotations

import csv
import tempfile
import threading
import time
from pathlib import Path

import gradio as gr
from gradio import image_utils

from .images import BadImageError, open_rgb
from .monitor import RequestMonitor
from .predict import Predictor
from .report import CONFUSION_NAME, CURVES_NAME, METRIC_ROWS

ALL_CLASSES = "all classes"


class UploadedImage(gr.Image):
    """gr.Image that hands our code the uploaded file untouched.

    gr.Image decodes uploads itself and an undecodable one reaches the client only as Gradio's
    generic error; decoding in our code lets every bad upload get a message that says what is wrong.
    `is_template` makes the browser use the stock Image widget.
    """

    is_template = True

    def preprocess(self, payload):
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            return image_utils.decode_base64_to_file(payload.url, self.GRADIO_CACHE, self.format)
        return payload.path


class App:
    """Handlers shared by the UI and the API; `predictors` maps a model name to its Predictor."""

    def __init__(self, predictors: dict[str, Predictor], monitor: RequestMonitor):
        self.predictors, self.monitor = predictors, monitor
        self._sample_predictions: dict[str, list] = {}
        self._samples_lock = threading.Lock()

    def predictor(self, name: str | None) -> Predictor:
        if not name:
            return next(iter(self.predictors.values()))
        if name not in self.predictors:
            raise gr.Error(f"Unknown model {name!r}; available: {', '.join(self.predictors)}.")
        return self.predictors[name]

    # -- classify
    def classify(self, image_path: str | None, top_k: int = 5, model: str | None = None):
        if image_path is None:
            raise gr.Error("Upload an image first.")
        predictor = self.predictor(model)
        start = time.perf_counter()
        try:
            top, inference_ms, size = predictor.classify(Path(image_path).read_bytes(), top_k,
                                                         name=f"The upload {Path(image_path).name!r}")
        except BadImageError as e:
            self.monitor.record("predict", 1000 * (time.perf_counter() - start), error=str(e), model=predictor.name)
            raise gr.Error(str(e)) from None
        self.monitor.record("predict", 1000 * (time.perf_counter() - start), top[0][0], size, model=predictor.name)
        info = f"**{top[0][0]}** ({100 * top[0][1]:.1f} %) · inference {inference_ms:.1f} ms · " \
               f"image {size[0]}×{size[1]} px · model `{predictor.name}` ({predictor.input_size} px input)"
        return dict(top), info

    # -- galleries
    def _predicted_samples(self, predictor: Predictor) -> list:
        """Predictions for the model's shipped samples, computed once per model."""
        with self._samples_lock:
            if predictor.name not in self._sample_predictions:
                images = [open_rgb(str(s.path)) for s in predictor.samples]
                tops = predictor.classify_many(images, k=3) if images else []
                self._sample_predictions[predictor.name] = list(zip(predictor.samples, tops))
            return self._sample_predictions[predictor.name]

    def _gallery(self, predictor: Predictor, class_name: str) -> list[tuple[str, str]]:
        return [(str(sample.path), f"true: {sample.label} · predicted: {top[0][0]} ({100 * top[0][1]:.0f} %)")
                for sample, top in self._predicted_samples(predictor)
                if sample.kind == "gallery" and class_name in (ALL_CLASSES, None, "", sample.label)]

    def samples(self, class_name: str = ALL_CLASSES, model: str | None = None):
        predictor = self.predictor(model)
        start = time.perf_counter()
        items = self._gallery(predictor, class_name)
        self.monitor.record("samples", 1000 * (time.perf_counter() - start), model=predictor.name)
        return items

    def classify_sample(self, class_name: str, top_k: int, model: str | None, evt: gr.SelectData):
        # a click is a classification, not a gallery request: it must not count as one in the stats
        items = self._gallery(self.predictor(model), class_name)
        return self.classify(items[evt.index][0], top_k, model)

    def failures(self, model: str | None = None):
        predictor = self.predictor(model)
        items = [(str(sample.path), f"true: {sample.label} · " + ", ".join(f"{n} {100 * p:.0f}%" for n, p in top))
                 for sample, top in self._predicted_samples(predictor) if sample.kind == "failure"]
        confusion, curves = predictor.folder / CONFUSION_NAME, predictor.folder / CURVES_NAME
        return items, (str(confusion) if confusion.is_file() else None), (str(curves) if curves.is_file() else None)

    # -- batch
    def classify_batch(self, files: list[str] | None, top_k: int = 5, model: str | None = None):
        if not files:
            raise gr.Error("Choose one or more image files.")
        predictor = self.predictor(model)
        start = time.perf_counter()
        images, rows = {}, [None] * len(files)
        for i, path in enumerate(files):
            name = Path(path).name
            try:
                images[i] = open_rgb(Path(path).read_bytes(), name=name)
            except BadImageError as e:
                rows[i] = [name, "", None, f"error: {e}"]
        tops = predictor.classify_many(list(images.values()), top_k)
        for i, top in zip(images, tops):
            rows[i] = [Path(files[i]).name, top[0][0], round(top[0][1], 4),
                       ", ".join(f"{label} {p:.3f}" for label, p in top)]
        csv_path = Path(tempfile.mkdtemp(prefix="batch-")) / "predictions.csv"
        with csv_path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "top1", "confidence", "top_k"])
            writer.writerows(rows)
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
            "training_command": p.training_args.get("command"),
            "dataset": p.training_args.get("dataset"),
        }

    def about_markdown(self, model: str | None = None) -> str:
        info = self.model_info(model)
        values = {key: info["metrics"][key] for key, _ in METRIC_ROWS if key in info["metrics"]}
        rows = "\n".join(f"| {label} | {'n/a' if values[key] is None else format(values[key], '.4f')} |"
                         for key, label in METRIC_ROWS if key in values)
        metrics = f"| metric ({info['metrics_split']}) | value |\n|---|---|\n{rows}" if rows else "No metrics recorded."
        command = f"```\n{info['training_command']}\n```" if info["training_command"] else "not recorded"
        flip = " · predictions average each image and its mirror" if info["test_time_augmentation"] == "flip" else ""
        size = info["input_size"]
        return (f"### {info['name']}\n`{info['architecture']}` · input {size}×{size} px{flip} · "
                f"{len(info['label_names'])} classes: {', '.join(info['label_names'])}\n\n{metrics}\n\n"
                f"**Training command**\n{command}")

    def stats(self) -> dict:
        return self.monitor.stats()


def build_ui(app: App, notice: str = "") -> gr.Blocks:
    names = list(app.predictors)
    first = app.predictors[names[0]]
    with gr.Blocks(title="Image classifier") as demo:
        gr.Markdown("# Image classifier\ntimm models trained with `train_accelerate.py`; every action below is "
                    "also an API endpoint (see *Use via API* at the bottom).")
        if notice:
            gr.Markdown(f"⚠️ {notice}", elem_id="notice")
        model = gr.Dropdown(names, value=names[0], label="Model", visible=len(names) > 1, interactive=True)

        with gr.Tab("Classify"):
            with gr.Row():
                with gr.Column():
                    image = UploadedImage(type="filepath", sources=["upload", "webcam", "clipboard"], label="Image")
                    top_k = gr.Slider(1, len(first.label_names), value=min(5, len(first.label_names)), step=1,
                                      label="Top-k")
                    button = gr.Button("Classify", variant="primary")
                with gr.Column():
                    label = gr.Label(label="Prediction", elem_id="prediction")
                    info = gr.Markdown()
            button.click(app.classify, [image, top_k, model], [label, info], api_name="predict")
            image.upload(app.classify, [image, top_k, model], [label, info], api_visibility="private")

        with gr.Tab("Gallery"):
            gr.Markdown("Test images drawn at random (fixed seed) from the model's dataset. Click one to classify it.")
            with gr.Row():
                class_filter = gr.Dropdown([ALL_CLASSES, *first.label_names], value=ALL_CLASSES, label="Class")
                gallery_k = gr.Slider(1, len(first.label_names), value=min(3, len(first.label_names)), step=1,
                                      label="Top-k")
            with gr.Row():
                gallery = gr.Gallery(label="Samples", columns=6, height="auto", elem_id="gallery", scale=3)
                with gr.Column(scale=1):
                    gallery_label = gr.Label(label="Prediction for the clicked image", elem_id="gallery-prediction")
                    gallery_info = gr.Markdown()
            class_filter.change(app.samples, [class_filter, model], gallery, api_name="samples")
            gallery.select(app.classify_sample, [class_filter, gallery_k, model], [gallery_label, gallery_info],
                           api_visibility="private")

        with gr.Tab("Where it fails"):
            failures = gr.Gallery(label="Misclassified test images (true class · top-3)", columns=6, height="auto")
            with gr.Row():
                confusion = gr.Image(label="Confusion matrix", type="filepath", interactive=False)
                curves = gr.Image(label="Training curves", type="filepath", interactive=False)

        with gr.Tab("Batch"):
            files = gr.File(file_count="multiple", label="Images")
            batch_k = gr.Slider(1, len(first.label_names), value=min(3, len(first.label_names)), step=1,
                                label="Top-k")
            batch_button = gr.Button("Classify all", variant="primary")
            table = gr.Dataframe(headers=["file", "top1", "confidence", "top_k"], label="Predictions")
            csv_file = gr.File(label="CSV")
            batch_button.click(app.classify_batch, [files, batch_k, model], [table, csv_file],
                               api_name="classify_batch")

        with gr.Tab("About the model"):
            about = gr.Markdown(app.about_markdown(names[0]))
            info_json = gr.JSON(visible=False)
            gr.Button("Model info as JSON", visible=False).click(app.model_info, model, info_json,
                                                                 api_name="model_info")

        with gr.Tab("Monitoring"):
            stats = gr.JSON(label="Requests since start")
            gr.Button("Refresh").click(app.stats, None, stats, api_name="stats")

        def show_model(name):
            p = app.predictor(name)
            k = len(p.label_names)
            sliders = [gr.Slider(maximum=k, value=min(v, k)) for v in (5, 3, 3)]
            return (gr.Dropdown(choices=[ALL_CLASSES, *p.label_names], value=ALL_CLASSES), *sliders,
                    app.samples(ALL_CLASSES, name), *app.failures(name), app.about_markdown(name))

        outputs = [class_filter, top_k, gallery_k, batch_k, gallery, failures, confusion, curves, about]
        model.change(show_model, model, outputs, api_visibility="private")
        demo.load(show_model, model, outputs, api_visibility="private")
    return demo
