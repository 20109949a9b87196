"""Gradio Space: serve a timm classifier trained with train_accelerate.py.

    python app.py                                # the bundled model(s)
    MODEL_ID=me/resnet18-cifar10 python app.py   # a Hub repo (MODEL_REVISION pins a revision, HF_TOKEN for private)
    python app.py --model runs/cifar10           # a local training output
"""
import argparse
import logging
import os

import uvicorn
from fastapi import FastAPI

from classifier.flagging import FlagStore
from classifier.model import ModelSourceError
from classifier.monitor import RequestMonitor
from classifier.predict import INFERENCE_PRECISIONS, load_predictors
from classifier.server import create_app
from classifier.security import FRAME_ANCESTORS, Limits
from classifier.service import App

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", help="Hub model id or local folder; the app exits if it cannot be loaded")
parser.add_argument("--revision", default=os.environ.get("MODEL_REVISION"), help="Hub revision (env MODEL_REVISION)")
parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", os.environ.get("PORT", 7860))))
parser.add_argument("--inference-precision", choices=INFERENCE_PRECISIONS,
                    default=os.environ.get("INFERENCE_PRECISION", "auto"),
                    help="auto: bf16 where the CPU runs it natively, else fp32; fp32 to force it (env INFERENCE_PRECISION)")
parser.add_argument("--private-stats", action="store_true", default=os.environ.get("PUBLIC_STATS", "1") == "0",
                    help="no Monitoring tab and no /stats endpoint (env PUBLIC_STATS=0); the request log is kept")
parser.add_argument("--frame-ancestors", default=os.environ.get("FRAME_ANCESTORS", FRAME_ANCESTORS),
                    help="sites allowed to embed the app in a frame (CSP frame-ancestors; env FRAME_ANCESTORS)")
parser.add_argument("--flag-dataset", default=os.environ.get("FLAG_DATASET") or None,
                    help="a Hub dataset (owner/name) for visitors' corrections, shown as 'Wrong? Tell us'; created "
                         "private if absent, HF_TOKEN must be able to write it (env FLAG_DATASET; default: off)")
parser.add_argument("--flag-every", type=float, default=float(os.environ.get("FLAG_EVERY_MINUTES", 5)),
                    help="minutes between commits of new corrections to the dataset (env FLAG_EVERY_MINUTES)")
parser.add_argument("--no-mcp", dest="mcp", action="store_false", default=os.environ.get("MCP_SERVER", "1") != "0",
                    help="no MCP server at /gradio_api/mcp/ for LLM agents (env MCP_SERVER=0)")


def build(args: argparse.Namespace, limits: Limits = Limits()) -> FastAPI:
    """The served application for parsed options: what main() runs, and what the tests serve."""
    try:
        # an explicit --model must load; MODEL_ID (a Space's setting) falls back to the bundled models with a notice
        predictors, notice = load_predictors(args.model or os.environ.get("MODEL_ID"), args.revision,
                                             fallback=args.model is None, precision=args.inference_precision)
    except ModelSourceError as e:
        raise SystemExit(f"error: {e}")
    try:
        flags = FlagStore(args.flag_dataset, args.flag_every) if args.flag_dataset else None
    except Exception as e:  # the owner asked for corrections: serving without a place for them would lose them
        raise SystemExit(f"error: cannot keep corrections in the dataset {args.flag_dataset!r}: {e}")
    return create_app(App(predictors, RequestMonitor(), limits, flags), notice, public_stats=not args.private_stats,
                      frame_ancestors=args.frame_ancestors, mcp_server=args.mcp)


def main(argv=None) -> None:
    args = parser.parse_args(argv)
    # our messages (classifier.*, the request log among them) at INFO, the libraries' at WARNING: httpx and
    # huggingface_hub's httpx2 log every HTTP request at INFO, hundreds of lines in a Space's log at each start
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("classifier").setLevel(logging.INFO)
    uvicorn.run(build(args), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
