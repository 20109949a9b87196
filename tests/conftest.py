"""Fixtures: small real datasets made on the fly, trained models and a served app, in an offline HF environment of the
session's own (a fresh folder, removed at the end). Shared helpers are in tests/helpers.py."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# isolate every cache and keep everything offline before any HF library is imported
_SANDBOX = Path(os.environ.get("PYTEST_SANDBOX") or tempfile.mkdtemp(prefix="classifier-tests-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ["HF_HOME"] = str(_SANDBOX / "hf_home")
os.environ["CLASSIFIER_CACHE"] = str(_SANDBOX / "tensor_cache")

from .helpers import (CLASSES, FAST, create_served_app, make_examples, serve, shape_image,  # noqa: E402
                      train, write_parquet_repo)


def pytest_sessionfinish(session, exitstatus):
    if "PYTEST_SANDBOX" not in os.environ:  # a folder this session made: caches, downloads, the tensor cache
        shutil.rmtree(_SANDBOX, ignore_errors=True)


@pytest.fixture(scope="session")
def parquet_repo(tmp_path_factory) -> Path:
    """A Hub-layout dataset folder (parquet, train + test, no validation) with non-standard column names."""
    folder = tmp_path_factory.mktemp("parquet_repo")
    return write_parquet_repo(folder, {"train": make_examples(60, seed=0), "test": make_examples(15, seed=1)})


@pytest.fixture(scope="session")
def kaggle_folder(tmp_path_factory) -> Path:
    """Kaggle's Intel layout: seg_train/<class>/*.jpg and seg_test/<class>/*.jpg."""
    root = tmp_path_factory.mktemp("kaggle")
    for split, n, seed in (("seg_train", 30, 2), ("seg_test", 8, 3)):
        for i, (image, label) in enumerate(make_examples(n, seed=seed)):
            path = root / split / CLASSES[label] / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.convert("RGB").save(path, quality=90)
    return root


@pytest.fixture(scope="session")
def trained(parquet_repo, tmp_path_factory) -> Path:
    """A model folder trained on the generated colour-blob dataset (fp32, so timm alone reproduces it exactly). It is
    resnet18, the product's model, not FAST's test_resnet: the served app's tests see its real size, and it makes
    mistakes (88 % on the test split) for the failure gallery and the calibration to show, where test_resnet makes
    none."""
    out = tmp_path_factory.mktemp("run") / "model"
    train("--dataset", parquet_repo, "--output-dir", out, "--epochs", "4", "--optimizer", "adamw", "--lr", "3e-3",
          "--weight-decay", "0.05", "--mixed-precision", "no", "--samples-per-class", "5", *FAST, "--model", "resnet18")
    return out


@pytest.fixture(scope="session")
def checkpointed_run(parquet_repo, tmp_path_factory) -> tuple[list, Path]:
    """One uninterrupted run, 3 epochs of 6 steps, a checkpoint every 2 steps (the newest 3 kept): what a resumed
    run must reproduce bit for bit (test_train, test_faults). -> (its arguments but --output-dir, its folder)"""
    args = ["--dataset", parquet_repo, "--epochs", "3", "--checkpoint-every", "2", "--checkpoint-limit", "3", *FAST]
    out = tmp_path_factory.mktemp("uninterrupted") / "model"
    train(*args, "--output-dir", out)
    return args, out


@pytest.fixture
def hub():
    """The loopback Hub stand-in (tests/hub_standin.py), empty."""
    from .hub_standin import HubStandIn

    standin = HubStandIn().start()
    yield standin
    standin.stop()


@pytest.fixture(scope="session")
def server(trained):
    """The app as app.py serves it (FastAPI + mounted Gradio) on a free loopback port: (url, model folder)."""
    with serve(create_served_app(trained)) as url:
        yield url, str(trained)


@pytest.fixture(scope="session")
def corpus_image(tmp_path_factory) -> Path:
    """A 64 px picture of the class red, as a PNG file."""
    import random

    path = tmp_path_factory.mktemp("images") / "red.png"
    shape_image("red", random.Random(1), size=64).save(path)
    return path
