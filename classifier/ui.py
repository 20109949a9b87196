"""The Gradio Blocks of the Space. Every action a user can take is also a named API endpoint."""
from __future__ import annotations

import gradio as gr
from gradio import image_utils

from .service import ALL_CLASSES, App


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


def build_ui(app: App, notice: str = "", public_stats: bool = True) -> gr.Blocks:
    names = list(app.predictors)
    first = app.predictors[names[0]]
    limits = app.limits
    # Gradio deletes the uploads and outputs it stored once they are this old, so its cache does not grow without end
    with gr.Blocks(title="Image classifier", delete_cache=(limits.cleanup_every_s, limits.temp_age_s)) as demo:
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

        if public_stats:
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
