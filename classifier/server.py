"""The served application: FastAPI with a plain JSON endpoint and a health check, the Gradio UI mounted at /.

Built to face the public internet (README, Security): request bodies, uploads, decodes, REST requests in flight and
the Gradio queue are bounded (classifier.security.Limits), only the files the page shows are served, only our own
error messages reach clients, and temporary files are deleted on a schedule.
"""
from __future__ import annotations

import time

import gradio as gr
from fastapi import FastAPI, File, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from .images import BadImageError
from .security import FRAME_ANCESTORS, BodySizeLimit, Busy, SecurityHeaders, start_janitor
from .service import App
from .ui import build_ui

CSS = "#gallery .thumbnail-item img {image-rendering: pixelated;}"  # CIFAR's 32 px samples stay crisp


def create_app(app: App, notice: str = "", public_stats: bool = True, frame_ancestors: str = FRAME_ANCESTORS) -> FastAPI:
    limits = app.limits
    api = FastAPI(title="Image classifier", description="POST /api/classify with an image file; GET /healthz.")
    in_flight = Busy(limits.rest_in_flight)

    @api.get("/healthz")
    def healthz():
        return {"status": "ok", "models": list(app.predictors), "notice": notice or None}

    @api.post("/api/classify")
    async def classify(file: UploadFile = File(...), top_k: int = Query(5, ge=1), model: str | None = None):
        if not in_flight.try_enter():
            return JSONResponse({"error": "The server is busy; retry in a moment."}, status_code=503,
                                headers={"Retry-After": "1"})
        try:
            return await _classify(file, top_k, model)
        finally:
            in_flight.leave()

    async def _classify(file: UploadFile, top_k: int, model: str | None):
        start = time.perf_counter()
        data = await file.read(limits.file_bytes + 1)
        if len(data) > limits.file_bytes:
            return JSONResponse({"error": f"Upload larger than {limits.file_bytes // 2**20} MB."}, status_code=413)
        if model is not None and model not in app.predictors:
            return JSONResponse({"error": f"Unknown model {model!r}.", "models": list(app.predictors)},
                                status_code=404)
        name = app.predictor(model).name
        try:
            top, inference_ms, size = await run_in_threadpool(app.classify_rest, data, file.filename, top_k, model)
        except BadImageError as e:
            app.monitor.record("rest_classify", 1000 * (time.perf_counter() - start), error=str(e), model=name)
            return JSONResponse({"error": str(e)}, status_code=422)
        app.monitor.record("rest_classify", 1000 * (time.perf_counter() - start), top[0][0], size, model=name)
        return {"model": name, "predictions": [{"label": label, "probability": p} for label, p in top],
                "inference_ms": round(inference_ms, 2), "image_size": list(size)}

    demo = build_ui(app, notice, public_stats)
    # two workers suit a 2-core CPU Space: one request computes while the other uploads/decodes
    demo.queue(default_concurrency_limit=2, max_size=limits.queue_size)
    mounted = gr.mount_gradio_app(api, demo, path="/", max_file_size=limits.file_bytes,
                                  allowed_paths=app.served_files(), show_error=False, theme=gr.themes.Soft(), css=CSS)
    # Gradio checks that a file named in a request was uploaded by a user only for apps it launched itself; a mounted
    # app counts as launched once it is served. (classifier.security.uploaded_file checks the same again.)
    demo.has_launched = True
    # an image plus the multipart framing to REST; a batch's files together to Gradio's upload; JSON elsewhere
    body_limits = [("/api/classify", limits.file_bytes + 64 * 1024), ("/gradio_api/upload", limits.upload_request_bytes)]
    mounted.add_middleware(BodySizeLimit, routes=body_limits, default_bytes=limits.json_request_bytes)
    mounted.add_middleware(SecurityHeaders, frame_ancestors=frame_ancestors)
    start_janitor([app.batch_folder], limits.cleanup_every_s)
    return mounted
