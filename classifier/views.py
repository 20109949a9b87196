"""What the page shows of the service's answers: label probabilities, Markdown summaries, captioned galleries, the
model card. The endpoint functions take the App first and the request's values after (ui.py wires them to components
under service.ENDPOINTS' names); the service's refusals become gr.Error, the one kind of message Gradio lets reach a
client (the server runs with show_error=False).
"""
from __future__ import annotations

import functools

import gradio as gr

from .report import METRIC_ROWS
from .service import ALL_CLASSES, App, Classification, ServiceError

LOW_CONFIDENCE_HINT = "low confidence: the image may not be one of this model's classes"


def refusals_shown(handler):
    """`handler` with the service's refusals raised as gr.Error (the message only: a refusal is the caller's
    mistake, the service logged it in one line). functools.wraps keeps the signature and docstring that the API page
    and MCP clients read."""
    @functools.wraps(handler)
    def shown(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except ServiceError as e:
            raise gr.Error(e.message, print_exception=False) from None
    return shown


@refusals_shown
def predict(app: App, image_path: str | None, top_k: int = 5, model: str | None = None):
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
    return prediction(app.classify_upload(image_path, top_k, model))


def prediction(answer: Classification) -> tuple[dict, str, dict]:
    """What the Classify tab shows of an answer: {label: probability}, the summary, the details (hidden: for API
    clients)."""
    return dict(answer.predictions), summary(answer), answer.as_dict()


@refusals_shown
def explain(app: App, image_path: str | None, class_name: str | None = None, model: str | None = None):
    """Where the model looked: a Grad-CAM heatmap over the image for one class. Costs one extra backward
    pass, only when asked.

    Args:
        image_path: the image (PNG, JPEG, GIF, WebP, BMP, TIFF...).
        class_name: the class to explain (default: the model's top class for this image).
        model: which served model answers (default: the first one).
    Returns:
        the heatmap image, and {"class", "probability", "low_confidence", "model"}.
    """
    explanation = app.explain(image_path, class_name, model)
    return explanation.heatmap, explanation.as_dict()


@refusals_shown
def classify_batch(app: App, files: list[str] | None, top_k: int = 5, model: str | None = None):
    """Classify many images at once: a table with a row per file and the same table as a CSV file.

    Args:
        files: the images; a file that cannot be read gets a row that says why.
        top_k: how many classes each row lists, the most likely first.
        model: which served model answers (default: the first one).
    Returns:
        the rows [file, top1, confidence, top_k], and the CSV file.
    """
    return app.classify_batch(files, top_k, model)


@refusals_shown
def flag(app: App, image_path: str | None, label: str | None, model: str | None = None) -> str:
    """Tell the model's owner the right class of an image the model got wrong, where this app collects corrections
    (its owner named a Hub dataset for them). Stored: the image as decoded (PNG, no EXIF), the class given, the
    model's name and its own answer, and the time; nothing about who sent it.

    Args:
        image_path: the image (PNG, JPEG, GIF, WebP, BMP, TIFF...).
        label: its right class, one of the model's classes.
        model: which served model got it wrong (default: the first one).
    Returns:
        a line saying what was stored and where.
    """
    stored = app.flag(image_path, label, model)
    # the model is named: this line may land after the page switched to another model
    return (f"Thank you: **{stored['label']}** is stored for this image ({stored['model']} said "
            f"{stored['predicted']}, {100 * stored['probability']:.0f} %). It reaches the dataset "
            f"`{stored['dataset']}` within "
            f"{app.flags.every_minutes:g} minutes.")


def flag_note(app: App) -> str:
    """What the "Wrong? Tell us" panel says is stored, and where (nothing where the app collects no corrections)."""
    if app.flags is None:
        return ""
    return (f"Pick the right class and press *Send*: the image (as PNG, without its metadata), the class you chose, "
            f"the model's answer and the time are stored in the Hub dataset `{app.flags.repo_id}` for the model's "
            "owner. Nothing is stored unless you press *Send*.")


def clicked_path(evt: gr.SelectData) -> str:
    """The file a gallery click names: the copy Gradio served the page, which lives among the uploads (a model
    folder's own files are not uploads, so the service refuses them)."""
    item = evt.value if isinstance(evt.value, dict) else {}
    image = item.get("image") if isinstance(item.get("image"), dict) else {}
    return image.get("path") or ""


@refusals_shown
def classify_clicked(app: App, top_k: int, model: str | None, evt: gr.SelectData):
    """A click on a gallery thumbnail: classifies the image the click names, whatever the grid's filter is by now.
    -> ({label: probability}, summary)."""
    answer = app.classify_upload(clicked_path(evt), top_k, model, what="The image")
    return dict(answer.predictions), summary(answer)


@refusals_shown
def explain_clicked(app: App, model: str | None, evt: gr.SelectData):
    """A click on a gallery or failure thumbnail: (the image, its heatmap) side by side for the model's top class,
    and a line saying which class that is (and the true one, for a failure)."""
    explanation = app.explain(clicked_path(evt), None, model, what="The image")
    caption_text = str(evt.value.get("caption") or "") if isinstance(evt.value, dict) else ""
    true = caption_text.split("·")[0].removeprefix("true:").strip() if caption_text.startswith("true:") else None
    said = (f"Where the model looked for **{explanation.label}** ({100 * explanation.probability:.0f} %), "
            "its answer")
    return (explanation.image, explanation.heatmap), said + (f"; the true class is **{true}**." if true else ".")


@refusals_shown
def samples(app: App, class_name: str = ALL_CLASSES, model: str | None = None) -> list[tuple[str, str]]:
    """A model's gallery images of one class (or all), captioned "✓ true class probability" or
    "✗ true class → predicted class probability".

    Args:
        class_name: a class of the model, or "all classes".
        model: which served model (default: the first one).
    """
    return captioned(app.samples(class_name, model))


def gallery(app: App, model: str | None) -> list[tuple[str, str]]:
    """The whole gallery of a model, captioned, for a page that shows it (not a request anyone made)."""
    return captioned(app.gallery(model))


def captioned(pairs) -> list[tuple[str, str]]:
    """(sample, top-3) pairs as a gr.Gallery's (path, caption) items."""
    return [(str(sample.path), caption(sample.label, top)) for sample, top in pairs]


def failures(app: App, model: str | None) -> list[tuple[str, str]]:
    return [(str(sample.path), f"true: {sample.label} · " + ", ".join(f"{n} {100 * p:.0f}%" for n, p in top))
            for sample, top in app.failures(model)]


def caption(true_label: str, top) -> str:
    """A gallery caption short enough to read whole on a thumbnail: "✓ cat 92 %", or "✗ cat → dog 54 %"."""
    predicted, p = top[0]
    return f"✓ {true_label} {100 * p:.0f} %" if predicted == true_label else f"✗ {true_label} → {predicted} {100 * p:.0f} %"


def summary(answer: Classification) -> str:
    top, p = answer.predictions[0]
    hint = f"\n\n⚠️ {LOW_CONFIDENCE_HINT.capitalize()}." if answer.low_confidence else ""
    return (f"**{top}** ({100 * p:.1f} %) · inference {answer.inference_ms:.1f} ms · "
            f"image {answer.image_size[0]}×{answer.image_size[1]} px · model `{answer.model}` "
            f"({answer.input_size} px input){hint}")


def about(app: App, model: str | None = None) -> str:
    """The About tab: the model's card as Markdown (architecture, classes, metrics, calibration, how it was trained)."""
    info = app.model_info(model)
    values = {key: info["metrics"][key] for key, _ in METRIC_ROWS if key in info["metrics"]}
    rows = "\n".join(f"| {label} | {'n/a' if values[key] is None else format(values[key], '.4f')} |"
                     for key, label in METRIC_ROWS if key in values)
    metrics = f"| metric ({info['metrics_split']}) | value |\n|---|---|\n{rows}" if rows else "No metrics recorded."
    command = f"```\n{info['training_command']}\n```" if info["training_command"] else "not recorded"
    # what the app applies comes from config.json; metrics.json only says what it did on the final split
    calibration = info["calibration"]
    if calibration and "temperature" in app.predictor(model).loaded.config:
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
    warning = f"⚠️ **{info['warning']}**\n\n" if info["warning"] else ""
    return (f"### {info['name']}\n{warning}`{info['architecture']}` · input {size}×{size} px{flip} · "
            f"{len(info['label_names'])} classes: {', '.join(info['label_names'])}{start}\n\n{metrics}\n\n"
            f"**Training command**\n{command}")
