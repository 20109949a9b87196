"""The Gradio Blocks of the Space. Every action a user can take is also a named API endpoint (service.ENDPOINTS)."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

import gradio as gr
import pandas as pd
from gradio import image_utils

from . import views
from .service import ALL_CLASSES, ENDPOINTS, MODEL_CALLS, App, ServiceError

CSS = """
#gallery .thumbnail-item img, #failures .thumbnail-item img {image-rendering: pixelated;}  /* 32 px samples stay crisp */
#upload img, #heatmap img {width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated;}  /* small
   photos and their heatmaps fill the box (a CIFAR heatmap is 32 px) */
#gallery .caption-label, #failures .caption-label {white-space: normal; max-width: 100%; opacity: .9;}  /* whole captions */
.notice {background: var(--color-yellow-50, #fffbeb); border: 1px solid var(--color-yellow-300, #fcd34d);
         border-radius: var(--radius-lg); padding: var(--spacing-md) var(--spacing-lg);}
.dark .notice {background: #422006; border-color: #a16207;}  /* dark mode: the light text on dark amber, not pale yellow */
.heatmap img {image-rendering: pixelated;}  /* a 32 px image and its heatmap, enlarged, stay crisp */
#about pre, #about code {white-space: pre-wrap; word-break: break-word;}  /* the training command wraps */
@media (max-width: 640px) {  /* a phone: one line of caption under a thumbnail's lower edge, not over the picture */
  #gallery .caption-label, #failures .caption-label {white-space: nowrap; overflow: hidden; text-overflow: ellipsis;
                                                     font-size: 10px; padding: 0 2px;}
}
/* Gradio hides "Use via API" on phones, where the header points to it (outside @media: Gradio scopes rules inside
   one to its .contain, which the footer is not in; at other widths it is shown anyway) */
footer .show-api {display: flex !important;}
footer .show-api-divider {display: inline !important;}
"""
MONITOR_EVERY_S = 5  # the Monitoring tab's plots refresh themselves this often, while the tab is shown
MONITOR_BUCKET_S = 10  # and count requests in buckets of this many seconds
# one colour per endpoint in every plot (each plot would otherwise colour the endpoints it happens to show in turn)
ENDPOINT_COLOURS = {"predict": "#4c72b0", "rest_classify": "#dd8452", "classify_batch": "#55a868",
                    "samples": "#c44e52", "explain": "#8172b3", "flag": "#937860"}


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


class ClassName(gr.Dropdown):
    """gr.Dropdown whose API schema is any string, so API and MCP clients may name any class.

    Gradio lists a dropdown's start-up choices as the only allowed values (allow_custom_value or not), and MCP
    clients enforce that list: the heatmap's menu starts empty and would refuse every class. The service checks the
    name against the model's classes and says which exist.
    """

    is_template = True

    def api_info(self):
        return {"type": "string"}


# Gradio gives every event a queue of its own (its concurrency_id defaults to the function); the events that run a
# model share one: MODEL_CALLS at once over all of them. Batches queue apart, one at a time, and take one of those
# places (App.model_calls) when they run, so single predictions always have a place while batches wait.
MODEL_QUEUE = dict(concurrency_id="model", concurrency_limit=MODEL_CALLS)
BATCH_QUEUE = dict(concurrency_id="batch", concurrency_limit=1)


class ShownModels:
    """The model each page shows, by Gradio session, from its first model switch on. An answer computed for another
    model (asked for before the switch, queued or still running when it came) is dropped, not shown under the new
    model's name; pages that never switched, and API clients, get every answer."""

    def __init__(self, sessions: int = 10_000):
        self._models: OrderedDict[str, str] = OrderedDict()
        self._lock, self._sessions = threading.Lock(), sessions

    def show(self, request: gr.Request | None, model: str) -> None:
        session = getattr(request, "session_hash", None)
        if session:
            with self._lock:
                self._models[session] = model
                self._models.move_to_end(session)
                while len(self._models) > self._sessions:
                    self._models.popitem(last=False)

    def other_than(self, request: gr.Request | None, model: str | None) -> bool:
        """Whether the page that sent `request` shows a model other than `model` by now."""
        with self._lock:
            shown = self._models.get(getattr(request, "session_hash", None))
        return shown is not None and shown != model


def top_k_slider(classes: int, value: int, **options) -> gr.Slider:
    return gr.Slider(1, classes, value=min(value, classes), step=1, label="Top-k", **options)


def api_name(name: str) -> str:
    assert name in ENDPOINTS, name  # every public endpoint is declared in service.ENDPOINTS
    return name


def json_endpoint(fn, name: str, output_label: str) -> None:
    """gr.api(fn) with real names for its values on the API page and in clients' schemas. The one trick on Gradio's
    internals kept for its own sake: gr.api labels values "1st", "2nd"... and has no public way to name them."""
    gr.api(fn, api_name=api_name(name))
    dependency = next(d for d in gr.context.get_blocks_context().fns.values() if d.api_name == name)
    for component, (parameter, *_) in zip(dependency.inputs, gr.utils.get_function_params(fn)):
        component.label = parameter
    dependency.outputs[0].label = output_label


def build_ui(app: App, notice: str = "", public_stats: bool = True) -> gr.Blocks:
    names = list(app.predictors)
    first = app.predictors[names[0]]
    limits = app.limits
    shown = ShownModels()

    def answer(request: gr.Request | None, model: str | None, view, *args, outputs: int = 2):
        """`view(app, *args)`, the answer of one model, for the page that sent `request`; dropped (gr.skip() leaves
        the `outputs` as the model switch set them) when the page shows another model before or after it runs."""
        skipped = tuple(gr.skip() for _ in range(outputs))
        if shown.other_than(request, model):
            return skipped
        result = view(app, *args)
        return skipped if shown.other_than(request, model) else result

    # the events' handlers: views', through answer(); their parameters are the API's
    def predict(image_path: str | None, top_k: int = 5, model: str | None = None, request: gr.Request = None):
        return answer(request, model, views.predict, image_path, top_k, model, outputs=3)

    def explain(image_path: str | None, class_name: str | None = None, model: str | None = None,
                request: gr.Request = None):
        return answer(request, model, views.explain, image_path, class_name, model)

    def classify_batch(files: list[str] | None, top_k: int = 5, model: str | None = None, request: gr.Request = None):
        return answer(request, model, views.classify_batch, files, top_k, model)

    def classify_clicked(top_k: int, model: str | None, evt: gr.SelectData, request: gr.Request = None):
        return answer(request, model, views.classify_clicked, top_k, model, evt)

    def explain_clicked(model: str | None, evt: gr.SelectData, request: gr.Request = None):
        return answer(request, model, views.explain_clicked, model, evt)

    def explain_gallery_click(model: str | None, evt: gr.SelectData, request: gr.Request = None):
        return explain_clicked(model, evt, request)[0]  # the Gallery tab has the prediction's own summary

    def samples(class_name: str = ALL_CLASSES, model: str | None = None):
        return views.samples(app, class_name, model)

    def flag(image_path: str | None, label: str | None, model: str | None = None):
        return views.flag(app, image_path, label, model)

    # the views' docstrings describe the endpoints on the API page and the tools to an MCP client (an LLM agent)
    for handler in (predict, explain, classify_batch, classify_clicked, explain_clicked, samples, flag):
        handler.__doc__ = getattr(views, handler.__name__).__doc__
    gallery_items = views.gallery(app, names[0])  # the first model's, shown from the start: a page load is not a request
    failure_items, plot_files = views.failures(app, names[0]), app.plots(names[0])
    # Gradio deletes the uploads and outputs it stored once they are this old, so its cache does not grow without end
    with gr.Blocks(title="Image classifier", delete_cache=(limits.cleanup_every_s, limits.temp_age_s)) as demo:
        gr.Markdown("# Image classifier\ntimm models trained with `train_accelerate.py`; every action below is "
                    "also an API endpoint (see *Use via API* at the bottom).")
        if notice:
            gr.Markdown(f"⚠️ {notice}", elem_id="notice", elem_classes="notice")
        # a link's ?model= that names no model served says so here (visible only then)
        link_notice = gr.Markdown(visible=False, elem_id="link-notice", elem_classes="notice")
        model = gr.Dropdown(names, value=names[0], label="Model", visible=len(names) > 1, interactive=True,
                            elem_id="model")

        # on a phone every tab shows, on a second row (the default hides those that do not fit behind "...")
        with gr.Tabs(overflow_behavior="wrap") as tabs:
            with gr.Tab("Classify"):
                with gr.Row():
                    with gr.Column():
                        # a fixed height: a 32x32 upload must not shrink the box to 32 px
                        image = UploadedImage(type="filepath", sources=["upload", "webcam", "clipboard"], label="Image",
                                              height=320, elem_id="upload")
                        top_k = top_k_slider(len(first.label_names), 5, elem_id="top-k")
                        button = gr.Button("Classify", variant="primary")
                        # the model's own test images, one per class; they follow the model menu
                        examples = gr.Dataset(components=[image], samples=example_rows(app, names[0]), type="index",
                                              label="Examples: the model's test images, one per class (click one)",
                                              samples_per_page=12, layout="gallery", elem_id="examples")
                    with gr.Column():
                        label = gr.Label(label="Prediction", elem_id="prediction")
                        info = gr.Markdown(label="Summary", elem_id="summary")
                        # the same answer as data for API clients, with REST's names (not shown on the page)
                        details = gr.JSON(label="Details", visible=False, elem_id="details")
                        with gr.Accordion("Where the model looked", open=False, elem_id="explain"):
                            with gr.Row():
                                explain_class = ClassName([], label="Class (default: the top one)",
                                                          allow_custom_value=True, scale=3, elem_id="explain-class")
                                explain_button = gr.Button("Show heatmap", scale=1)
                            heatmap = gr.Image(label="Heatmap", type="pil", interactive=False, height=320,
                                               elem_id="heatmap")
                            explain_details = gr.JSON(label="Heatmap details", visible=False)
                        # only where the owner named a dataset for corrections (classifier/flagging.py)
                        with gr.Accordion("Wrong? Tell us", open=False, visible=app.flags is not None,
                                          elem_id="flag"):
                            gr.Markdown(views.flag_note(app))
                            with gr.Row():
                                flag_class = ClassName(first.label_names, value=None, label="The right class",
                                                       allow_custom_value=True, scale=3, elem_id="flag-class")
                                flag_button = gr.Button("Send", scale=1, elem_id="flag-send")
                            flag_said = gr.Markdown(label="Stored", elem_id="flag-said")
                # an error must not leave the previous image's answer on screen
                answers, cleared = [label, info, details, heatmap], (None, "", None, None)
                top_classes = dict(fn=prediction_classes, inputs=label, outputs=explain_class, queue=False,
                                   api_visibility="private")
                classify_event = button.click(lambda: cleared, None, answers, queue=False, api_visibility="private").then(
                    predict, [image, top_k, model], [label, info, details], api_name=api_name("predict"), **MODEL_QUEUE)
                classify_event.then(**top_classes)
                upload_event = image.upload(lambda: cleared, None, answers, queue=False, api_visibility="private").then(
                    predict, [image, top_k, model], [label, info, details], api_visibility="private", **MODEL_QUEUE)
                upload_event.then(**top_classes)
                image.clear(lambda: cleared, None, answers, queue=False, api_visibility="private")

                def pick_example(index: int, model_name: str | None):
                    paths = app.examples(model_name)
                    return (paths[index] if isinstance(index, int) and 0 <= index < len(paths) else None), *cleared

                example_event = examples.click(pick_example, [examples, model], [image, *answers], queue=False,
                                               api_visibility="private").then(
                    predict, [image, top_k, model], [label, info, details], api_visibility="private", **MODEL_QUEUE)
                example_event.then(**top_classes)
                flag_button.click(flag, [image, flag_class, model], flag_said, api_name=api_name("flag"),
                                  **MODEL_QUEUE)
                explain_event = explain_button.click(explain, [image, explain_class, model], [heatmap, explain_details],
                                                     api_name=api_name("explain"), **MODEL_QUEUE)

            with gr.Tab("Gallery"):
                gr.Markdown("Test images drawn at random (fixed seed) from the model's dataset. Click one to classify it.")
                with gr.Row():
                    # any model's classes are accepted through the API; the service says when one is not the model's
                    class_filter = ClassName([ALL_CLASSES, *first.label_names], value=ALL_CLASSES, label="Class",
                                             allow_custom_value=True, elem_id="class-filter")
                    gallery_k = top_k_slider(len(first.label_names), 3)
                with gr.Row():
                    gallery = gr.Gallery(gallery_items, label="Samples (true class → prediction)", columns=5,
                                         height="auto", elem_id="gallery", scale=3,
                                         allow_preview=False)  # a click classifies; the grid stays in view
                    with gr.Column(scale=1):
                        gallery_label = gr.Label(label="Prediction for the clicked image", elem_id="gallery-prediction")
                        gallery_info = gr.Markdown(label="Summary")
                        gallery_heatmap = gr.ImageSlider(label="Image | heatmap", type="pil",
                                                         interactive=False, elem_id="gallery-heatmap",
                                                         elem_classes="heatmap")
                # a refused class is an error message; the grid stays usable (an error status would cover it)
                class_filter.change(samples, [class_filter, model], gallery, api_name=api_name("samples"),
                                    show_progress="hidden")
                # the click names its image: the filter may have changed the grid (or been refused) since it was drawn
                gallery_event = gallery.select(classify_clicked, [gallery_k, model], [gallery_label, gallery_info],
                                               api_visibility="private", **MODEL_QUEUE)
                gallery_event.then(**scroll_into_view("gallery-prediction"))
                # and beside it, where the model looked (one more backward pass)
                gallery_heatmap_event = gallery.select(explain_gallery_click, model, gallery_heatmap,
                                                       api_visibility="private", **MODEL_QUEUE)

            with gr.Tab("Where it fails"):
                gr.Markdown("Click an image to see where the model looked for its (wrong) answer.")
                with gr.Row():
                    failures = gr.Gallery(failure_items, label="Misclassified test images (true class · top-3)",
                                          columns=5, height="auto", elem_id="failures", scale=3, allow_preview=False)
                    with gr.Column(scale=1):
                        failure_heatmap = gr.ImageSlider(label="Image | heatmap", type="pil",
                                                         interactive=False, elem_id="failure-heatmap",
                                                         elem_classes="heatmap")
                        failure_info = gr.Markdown(elem_id="failure-info")
                failure_event = failures.select(explain_clicked, model, [failure_heatmap, failure_info],
                                                api_visibility="private", **MODEL_QUEUE)
                failure_event.then(**scroll_into_view("failure-heatmap"))
                with gr.Row():
                    confusion = gr.Image(plot_files[0], label="Confusion matrix", type="filepath", interactive=False)
                    calibration = gr.Image(plot_files[1], label="Calibration (reliability diagram)", type="filepath",
                                           interactive=False)
                curves = gr.Image(plot_files[2], label="Training curves", type="filepath", interactive=False)

            with gr.Tab("Batch"):
                files = gr.File(file_count="multiple", label="Images")
                batch_k = top_k_slider(len(first.label_names), 3)
                batch_button = gr.Button("Classify all", variant="primary")
                table = gr.Dataframe(headers=["file", "top1", "confidence", "top_k"], label="Predictions")
                csv_file = gr.File(label="CSV")
                batch_event = batch_button.click(classify_batch, [files, batch_k, model], [table, csv_file],
                                                 api_name=api_name("classify_batch"), **BATCH_QUEUE)

            with gr.Tab("About the model"):
                about = gr.Markdown(views.about(app, names[0]), elem_id="about")

            if public_stats:
                with gr.Tab("Monitoring"):
                    gr.Markdown(f"Requests since the server started (the last 30 minutes, in {MONITOR_BUCKET_S}-second "
                                f"steps; refreshed every {MONITOR_EVERY_S} s while this tab is shown).")
                    with gr.Row():
                        requests_plot = gr.LinePlot(x="time", y="requests", color="endpoint", x_title="time",
                                                    color_map=ENDPOINT_COLOURS,
                                                    y_title=f"requests per {MONITOR_BUCKET_S} s", label="Requests",
                                                    y_lim=[0, None])
                        latency_plot = gr.ScatterPlot(x="time", y="latency_ms_p50", color="endpoint", x_title="time",
                                                      color_map=ENDPOINT_COLOURS,
                                                      y_title="median latency (ms)", label="Latency", y_lim=[0, None])
                    with gr.Row():
                        classes_plot = gr.BarPlot(x="class", y="predictions", label="Predicted classes",
                                                  y_lim=[0, None])
                        errors = gr.Markdown(label="Errors")
                    plots = [requests_plot, latency_plot, classes_plot, errors]
                    # the page polls only while this tab is shown: opening it starts the timer, any other tab stops it
                    timer = gr.Timer(MONITOR_EVERY_S, active=False)
                    timer.tick(lambda: monitoring_plots(app), None, plots, queue=False, api_visibility="private")

        if public_stats:
            def tab_shown(evt: gr.SelectData):
                if evt.value == "Monitoring":
                    return gr.Timer(active=True), *monitoring_plots(app)
                return gr.Timer(active=False), *(gr.skip() for _ in plots)

            tabs.select(tab_shown, None, [timer, *plots], queue=False, api_visibility="private")

        def open_link(request: gr.Request):
            """A deep link, `?model=<name>`, opens the page on that model (the menu's change shows it); a name that
            is not served leaves the first model and says so."""
            wanted = request.query_params.get("model") if request else None
            if not wanted or wanted == names[0]:
                return gr.skip(), gr.skip()
            if wanted in app.predictors:
                return wanted, gr.skip()
            shown_name = wanted[:100].replace("`", "'")
            return gr.skip(), gr.Markdown(f"⚠️ The link asks for the model `{shown_name}`, which this app does not "
                                          f"serve; showing `{names[0]}`. Models: {', '.join(names)}.", visible=True)

        demo.load(open_link, None, [model, link_notice], queue=False, api_visibility="private",
                  show_progress="hidden")
        # API-only endpoints: no component shows them (the About tab shows the model's card)
        json_endpoint(views.refusals_shown(app.model_info), "model_info", "Model info")
        if public_stats:
            json_endpoint(app.stats, "stats", "Statistics")

        def show_model(name, image_path, k_classify, k_gallery, k_batch, request: gr.Request = None):
            """A new model: its classes, galleries and card; the sliders keep their values (within its classes); the
            current upload is classified again by it, and answers of the previous model are cleared (those still
            queued are cancelled, those still running dropped when they end: ShownModels)."""
            shown.show(request, name)
            p = app.predictor(name)
            classes = len(p.label_names)
            labels, summary_text, answer_details = None, "", None
            if image_path:
                try:
                    labels, summary_text, answer_details = views.prediction(
                        app.classify_upload(image_path, min(int(k_classify), classes), name))
                except ServiceError:
                    pass
            confusion_plot, calibration_plot, curves_plot = app.plots(name)
            return {class_filter: gr.Dropdown(choices=[ALL_CLASSES, *p.label_names], value=ALL_CLASSES),
                    top_k: top_k_slider(classes, int(k_classify)), gallery_k: top_k_slider(classes, int(k_gallery)),
                    batch_k: top_k_slider(classes, int(k_batch)), examples: gr.Dataset(samples=example_rows(app, name)),
                    gallery: views.gallery(app, name), failures: views.failures(app, name),
                    confusion: confusion_plot, calibration: calibration_plot, curves: curves_plot,
                    about: views.about(app, name),
                    label: labels, info: summary_text, details: answer_details,
                    explain_class: class_choices(list(labels or {})),
                    flag_class: gr.Dropdown(choices=p.label_names, value=None), flag_said: "",
                    # the previous model's answers go
                    heatmap: None, gallery_label: None, gallery_info: "", table: None, csv_file: None,
                    gallery_heatmap: None, failure_heatmap: None, failure_info: ""}

        outputs = [class_filter, top_k, gallery_k, batch_k, examples, gallery, failures, confusion, calibration, curves, about,
                   label, info, details, explain_class, flag_class, flag_said, heatmap, gallery_label, gallery_info, table, csv_file,
                   gallery_heatmap, failure_heatmap, failure_info]
        inputs = [model, image, top_k, gallery_k, batch_k]
        model.change(show_model, inputs, outputs, api_visibility="private",
                     cancels=[classify_event, upload_event, example_event, explain_event, gallery_event, gallery_heatmap_event,
                              failure_event, batch_event], **MODEL_QUEUE)
    return demo


def scroll_into_view(elem_id: str) -> dict:
    """An event step that scrolls the element into view where it is off the screen: on a phone an answer lies below
    the grid that was tapped (scroll_to_output did not move the page for a gallery's select event, seen at 390 px)."""
    js = f"() => document.getElementById({elem_id!r})?.scrollIntoView({{block: 'nearest'}})"
    return dict(fn=None, js=js, queue=False, api_visibility="private")


def example_rows(app: App, model: str) -> list[list[str]]:
    return [[path] for path in app.examples(model)]


def prediction_classes(prediction: dict | str | None) -> gr.Dropdown:
    """The heatmap's class choices: the classes of the top-k on screen, the top one first. Gradio hands a function a
    gr.Label's value as {label: probability} (a bare label when it has no probabilities)."""
    if isinstance(prediction, dict):
        return class_choices(sorted(prediction, key=prediction.get, reverse=True))
    return class_choices([str(prediction)] if prediction else [])


def class_choices(classes: list[str]) -> gr.Dropdown:
    return gr.Dropdown(choices=classes, value=classes[0] if classes else None)


def monitoring_plots(app: App):
    """The Monitoring tab: requests per bucket (a line per endpoint), median latency per bucket (points: a bucket
    without requests has none), the predicted-class histogram and the error count."""
    step = MONITOR_BUCKET_S
    timeline = pd.DataFrame(app.monitor.timeline(step), columns=["time", "endpoint", "requests", "errors",
                                                                 "latency_ms_p50"])
    timeline = timeline.astype({"requests": "int64", "errors": "int64", "latency_ms_p50": "float64"})
    requests = requests_per_bucket(timeline, step)
    for frame in (requests, timeline):
        frame["time"] = pd.to_datetime(frame["time"], unit="s")
    stats = app.stats()
    classes = pd.DataFrame(list(stats["top1_histogram"].items()), columns=["class", "predictions"]).astype(
        {"predictions": "int64"})
    per_endpoint = ", ".join(f"{name} {e['errors']}" for name, e in stats["endpoints"].items() if e["errors"])
    errors = (f"**Errors: {stats['errors']}** of {stats['requests']} requests" +
              (f" ({per_endpoint})" if per_endpoint else ""))
    # an empty frame must not be sent: the browser fixes a plot's axis types from the first data it gets, and an
    # empty frame's columns have no types (the plots stayed blank or nominal afterwards); skip until there is data
    shown = [frame if len(frame) else gr.skip() for frame in (requests, timeline, classes)]
    return *shown, errors


def requests_per_bucket(timeline: pd.DataFrame, step: int) -> pd.DataFrame:
    """(time, endpoint, requests) for every bucket from the one before the first request to now: a quiet spell is a
    run of zeros, not a slope between two busy buckets, and an endpoint called once still gets a line (a line needs
    two points)."""
    if timeline.empty:
        return timeline[["time", "endpoint", "requests"]].copy()
    buckets = range(int(timeline["time"].min()) - step, int(time.time()) // step * step + 1, step)
    counts = timeline.pivot_table(index="time", columns="endpoint", values="requests", fill_value=0)
    return (counts.reindex(buckets, fill_value=0).stack().rename("requests").reset_index()
            .astype({"requests": "int64"}))
