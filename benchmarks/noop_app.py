"""Gradio's floor: the app's shape (FastAPI + Gradio mounted at /, same queue) around a function that does nothing.

    python -m benchmarks.noop_app --port 7861

`/predict` takes the same image upload and top-k as the real app's and returns a fixed label, so a
`gradio_client` call against it costs what Gradio itself costs: upload, queue, events, response.
`POST /api/classify` is the same for the REST endpoint: multipart upload, the hop to a worker thread, JSON.
"""
from __future__ import annotations

import argparse

import gradio as gr
import uvicorn
from fastapi import FastAPI, File, Query, UploadFile
from fastapi.concurrency import run_in_threadpool


def build() -> FastAPI:
    api = FastAPI()

    @api.get("/healthz")
    def healthz():
        return {"status": "ok"}

    @api.post("/api/classify")
    async def classify(file: UploadFile = File(...), top_k: int = Query(5, ge=1)):
        data = await file.read()
        await run_in_threadpool(len, data)  # where the real endpoint decodes and runs the model
        return {"model": "no-op", "predictions": [{"label": f"class {i}", "probability": 1.0 / (i + 1)}
                                                  for i in range(top_k)], "inference_ms": 0.0, "image_size": [0, 0]}

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
