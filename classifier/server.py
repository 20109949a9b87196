"""The served application: FastAPI with a plain JSON endpoint and a health check, the Gradio UI mounted at /."""
from __future__ import annotations

import time

import gradio as gr
from fastapi import FastAPI, File, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from .images import BadImageError
from .ui import App, build_ui

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
CSS = "#gallery .thumbnail-item img {image-rendering: pixelated;}"  # CIFAR's 32 px samples stay crisp


def create_app(app: App, notice: str = "", max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    api = FastAPI(title="Image classifier", description="POST /api/classify with an image file; GET /healthz.")

    @api.get("/healthz")
    def healthz():
        return {"status": "ok", "models": list(app.predictors), "notice": notice or None}

    @api.post("/api/classify")
    async def classify(file: UploadFile = File(...), top_k: int = Query(5, ge=1), model: str | None = None):
        start = time.perf_counter()
        data = await file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            return JSONResponse({"error": f"Upload larger than {max_upload_bytes // 2**20} MB."}, status_code=413)
        if model is not None and model not in app.predictors:
            return JSONResponse({"error": f"Unknown model {model!r}.", "models": list(app.predictors)},
                                status_code=404)
        predictor = app.predictor(model)
        try:
            top, inference_ms, size = await run_in_threadpool(predictor.classify, data, top_k,
                                                              f"The upload {file.filename!r}")
        except BadImageError as e:
            app.monitor.record("rest_classify", 1000 * (time.perf_counter() - start), error=str(e),
                               model=predictor.name)
            return JSONResponse({"error": str(e)}, status_code=422)
        app.monitor.record("rest_classify", 1000 * (time.perf_counter() - start), top[0][0], size,
                           model=predictor.name)
        return {"model": predictor.name, "predictions": [{"label": label, "probability": p} for label, p in top],
                "inference_ms": round(inference_ms, 2), "image_size": list(size)}

    demo = build_ui(app, notice)
    # two workers suit a 2-core CPU Space: one request computes while the other uploads/decodes
    demo.queue(default_concurrency_limit=2)
    folders = [str(p.folder) for p in app.predictors.values()]
    return gr.mount_gradio_app(api, demo, path="/", max_file_size=max_upload_bytes, allowed_paths=folders,
                               theme=gr.themes.Soft(), css=CSS)
