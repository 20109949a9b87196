"""The served application: FastAPI with a plain JSON endpoint and a health check, the Gradio UI mounted at /.

Built to face the public internet (docs/APP.md, Security): request bodies, uploads, decodes, REST requests in flight and
the Gradio queue are bounded (classifier.security.Limits), only the files the page shows are served, only our own
error messages reach clients, and temporary files are deleted on a schedule.
"""
from __future__ import annotations

import logging

import gradio as gr
from fastapi import FastAPI, File, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from .predict import torch_thread_answers
from .security import FRAME_ANCESTORS, BodySizeLimit, InFlightLimit, SecurityHeaders, start_janitor
from .service import ENDPOINTS, App, ServiceError
from .ui import CSS, build_ui

log = logging.getLogger(__name__)


# the answers' shapes, for /docs and for clients generated from /openapi.json
class Prediction(BaseModel):
    label: str
    probability: float


class Classification(BaseModel):
    model: str
    predictions: list[Prediction]
    low_confidence: bool
    inference_ms: float
    image_size: list[int]


class Health(BaseModel):
    status: str
    models: list[str]
    notice: str | None


class Error(BaseModel):
    error: str
    models: list[str] | None = None  # with 404: the models this server has


ERRORS = {code: {"model": Error} for code in (400, 404, 413, 422, 500, 503)}


def error(status: int, message: str, headers: dict | None = None, **extra) -> JSONResponse:
    """Every REST error has this one shape: {"error": message, ...}."""
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


def create_app(app: App, notice: str = "", public_stats: bool = True, frame_ancestors: str = FRAME_ANCESTORS,
               mcp_server: bool = True) -> FastAPI:
    limits = app.limits
    api = FastAPI(title="Image classifier", description="POST /api/classify with an image file; GET /healthz.")

    @api.exception_handler(ServiceError)
    async def service_error(request, e: ServiceError):
        return error(e.status, e.message, **({"models": list(app.predictors)} if e.status == 404 else {}))

    @api.exception_handler(RequestValidationError)
    async def invalid_request(request, e: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, p['loc'][1:])) or 'request'}: {p['msg']}" for p in e.errors())
        return error(422, f"Invalid request: {problems}.")

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        return error(e.status_code, str(e.detail))

    @api.exception_handler(Exception)
    async def unexpected(request, e: Exception):
        # the traceback goes to the log (Starlette re-raises after answering); the client gets our one shape
        return error(500, "The server failed on this request; it was logged.")

    @api.get("/healthz", response_model=Health, responses={503: {"model": Error}})
    def healthz():
        if not torch_thread_answers(limits.health_timeout_s):
            log.error("health check: the model thread has not answered in %s s", limits.health_timeout_s)
            return error(503, f"The model has not answered in {limits.health_timeout_s:g} s.")
        return {"status": "ok", "models": list(app.predictors), "notice": notice or None}

    classify_path = ENDPOINTS["predict"].rest.split()[1]

    @api.post(classify_path, response_model=Classification, responses=ERRORS)
    async def classify(file: UploadFile = File(...), top_k: float = 5, model: str | None = None):
        data = await file.read(limits.file_bytes + 1)
        if len(data) > limits.file_bytes:
            return error(413, f"Upload larger than {limits.file_bytes // 2**20} MB.")
        answer = await run_in_threadpool(app.classify, data, f"The upload {file.filename!r}", top_k, model,
                                         "rest_classify")
        return answer.as_dict()

    # the other REST routes: GET, query parameters = the App method's, the same result as the Gradio endpoint
    for endpoint in ENDPOINTS.values():
        if endpoint.rest and endpoint.rest.startswith("GET ") and (public_stats or endpoint.api_name != "stats"):
            api.add_api_route(endpoint.rest.split()[1], getattr(app, endpoint.api_name), methods=["GET"],
                              summary=endpoint.summary, responses=ERRORS)

    demo = build_ui(app, notice, public_stats)
    # two workers suit a 2-core CPU Space: one request computes while the other uploads/decodes
    demo.queue(default_concurrency_limit=2, max_size=limits.queue_size)
    mounted = gr.mount_gradio_app(api, demo, path="/", max_file_size=limits.file_bytes,
                                  allowed_paths=app.served_files(), show_error=False, theme=gr.themes.Soft(), css=CSS,
                                  mcp_server=mcp_server)
    # Gradio checks that a file named in a request was uploaded by a user only for apps it launched itself; a mounted
    # app counts as launched once it is served. (classifier.security.uploaded_file checks the same again.)
    demo.has_launched = True
    # an image plus the multipart framing to REST; a batch's files together to Gradio's upload; an MCP call carries
    # its image inside the JSON as base64 (4/3 of the bytes) plus the request's framing; JSON elsewhere
    body_limits = [(classify_path, limits.file_bytes + 64 * 1024), ("/gradio_api/upload", limits.upload_request_bytes),
                   ("/gradio_api/mcp", limits.file_bytes * 4 // 3 + 16 * 1024)]
    mounted.add_middleware(BodySizeLimit, routes=body_limits, default_bytes=limits.json_request_bytes)
    mounted.add_middleware(InFlightLimit, path=classify_path, limit=limits.rest_in_flight)
    mounted.add_middleware(SecurityHeaders, frame_ancestors=frame_ancestors)
    start_janitor([app.batch_folder], limits.cleanup_every_s)
    return mounted
