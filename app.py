"""Gradio Space: serve a timm classifier trained with train_accelerate.py.

    python app.py                                # the bundled model(s)
    MODEL_ID=me/resnet18-cifar10 python app.py   # a Hub repo (MODEL_REVISION pins a revision, HF_TOKEN for private)
    python app.py --model runs/cifar10           # a local training output
"""
import argparse
import logging
import os

import uvicorn

from classifier.model import ModelSourceError
from classifier.monitor import RequestMonitor
from classifier.predict import load_predictors
from classifier.server import create_app
from classifier.ui import App

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--model", default=os.environ.get("MODEL_ID"), help="Hub model id or local folder (env MODEL_ID)")
parser.add_argument("--revision", default=os.environ.get("MODEL_REVISION"), help="Hub revision (env MODEL_REVISION)")
parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"))
parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", os.environ.get("PORT", 7860))))

if __name__ == "__main__":
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        predictors, notice = load_predictors(args.model, args.revision)
    except ModelSourceError as e:
        raise SystemExit(f"error: {e}")
    uvicorn.run(create_app(App(predictors, RequestMonitor()), notice), host=args.host, port=args.port)
