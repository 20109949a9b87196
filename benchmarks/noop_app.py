"""Gradio's floor: the app's shape (FastAPI + Gradio mounted at /, same queue) around a function that does nothing.

    python -m benchmarks.noop_app --port 7861

`/predict` takes the same image upload and top-k as the real app's and returns a fixed label, so a
`gradio_client` call against it costs what Gradio itself costs: upload, queue, events, response.
"""
from __future__ import annotations

import argparse

import gradio as gr
import uvicorn
from fastapi import FastAPI


def build() -> FastAPI:
    api = FastAPI()

    @api.get("/healthz")
    def healthz():
        return {"status": "ok"}

    def predict(image_path, k):  # the same outputs as the app's /predict: a label and a line of text
        return {f"class {i}": 1.0 / (i + 1) for i in range(int(k))}, "no-op"

    with gr.Blocks() as demo:
        image, k = gr.Image(type="filepath"), gr.Slider(1, 10, value=5, step=1)
        label, details = gr.Label(), gr.Markdown()
        gr.Button("Classify").click(predict, [image, k], [label, details], api_name="predict")
    demo.queue(default_concurrency_limit=2)  # as classifier.server configures the real app
    return gr.mount_gradio_app(api, demo, path="/")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=7861)
    args = parser.parse_args()
    uvicorn.run(build(), host="127.0.0.1", port=args.port, log_level="warning")
