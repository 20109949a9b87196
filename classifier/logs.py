"""How the command-line tools log: our messages through one handler, the libraries' warnings once, their noise not."""
from __future__ import annotations

import logging


def configure_logging() -> None:
    """Our messages through a handler on the `classifier` logger only. huggingface_hub and datasets print their
    warnings through handlers of their own; a handler on the root logger as well printed each of them twice."""
    ours = logging.getLogger("classifier")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        ours.addHandler(handler)
    ours.setLevel(logging.INFO)
    for noisy in ("timm", "httpx", "huggingface_hub", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # datasets reads a local folder's README.md as a dataset card; one without a metadata block is no fault here
    logging.getLogger("huggingface_hub.repocard").addFilter(
        lambda record: "Repo card metadata block was not found" not in record.getMessage())
