"""Shared fixtures: small real datasets made on the fly, and an offline, sandboxed HF environment."""
from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import pytest

# isolate every cache and keep everything offline before any HF library is imported
_SANDBOX = Path(os.environ.get("PYTEST_SANDBOX", "/tmp/classifier-tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_UPDATE_DOWNLOAD_COUNTS", "0")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ["HF_HOME"] = str(_SANDBOX / "hf_home")
os.environ["CLASSIFIER_CACHE"] = str(_SANDBOX / "tensor_cache")

import datasets  # noqa: E402

from benchmarks.load_app import free_port  # noqa: E402,F401  (shared with the load script)
from PIL import Image, ImageDraw  # noqa: E402

CLASSES = ["red", "green", "blue", "yellow"]
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def shape_image(label: str, rng: random.Random, size: int = 32, mode: str = "RGB") -> Image.Image:
    """A noisy grey background with a randomly placed blob whose colour is the class."""
    image = Image.effect_noise((size, size), 40).convert("RGB")
    draw = ImageDraw.Draw(image)
    r = rng.randint(size // 4, size // 2)
    x, y = rng.randint(0, size - r), rng.randint(0, size - r)
    jitter = [min(255, max(0, c + rng.randint(-25, 25))) for c in COLOURS[label]]
    (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x, y, x + r, y + r], fill=tuple(jitter))
    if mode == "RGBA":
        image.putalpha(255)
    elif mode == "P":
        image = image.quantize(64)
    return image


def make_examples(n_per_class: int, seed: int, size: int = 32):
    rng = random.Random(seed)
    examples = []
    for label_index, label in enumerate(CLASSES):
        for i in range(n_per_class):
            # mixed modes and a few odd sizes: the loader must convert all of them
            mode = ("RGB", "RGB", "RGBA", "P")[i % 4]
            s = size + (7 if i % 10 == 3 else 0)
            examples.append((shape_image(label, rng, s, mode), label_index))
    rng.shuffle(examples)
    return examples


@pytest.fixture(scope="session")
def sandbox() -> Path:
    _SANDBOX.mkdir(parents=True, exist_ok=True)
    return _SANDBOX


def write_parquet_repo(folder: Path, splits: dict, image_column="img", label_column="fine_label") -> Path:
    features = datasets.Features({image_column: datasets.Image(), label_column: datasets.ClassLabel(names=CLASSES)})
    for split, examples in splits.items():
        ds = datasets.Dataset.from_dict(
            {image_column: [im for im, _ in examples], label_column: [lb for _, lb in examples]}, features=features
        )
        (folder / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


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


FAST = ["--img-size", "32", "--batch-size", "32", "--no-pretrained", "--eval-batch-size", "64"]


def reset_accelerate_state() -> None:
    """accelerate's state is a per-process singleton; each in-process run must start fresh as a new process would."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def train(*args) -> None:
    """The real CLI entry point, in-process."""
    from classifier.train import main

    reset_accelerate_state()
    main([str(a) for a in args])


@pytest.fixture(scope="session")
def trained(parquet_repo, tmp_path_factory) -> Path:
    """A model folder trained on the generated colour-blob dataset (fp32, so timm alone reproduces it exactly)."""
    out = tmp_path_factory.mktemp("run") / "model"
    train("--dataset", parquet_repo, "--output-dir", out, "--epochs", "4", "--optimizer", "adamw", "--lr", "3e-3",
          "--weight-decay", "0.05", "--mixed-precision", "no", "--samples-per-class", "5", *FAST)
    return out


@pytest.fixture(scope="session")
def checkpointed_run(parquet_repo, tmp_path_factory) -> tuple[list, Path]:
    """One uninterrupted run, 3 epochs of 6 steps, a checkpoint every 2 steps (the newest 3 kept): what a resumed
    run must reproduce bit for bit (test_train, test_faults). -> (its arguments but --output-dir, its folder)"""
    args = ["--dataset", parquet_repo, "--epochs", "3", "--checkpoint-every", "2", "--checkpoint-limit", "3", *FAST]
    out = tmp_path_factory.mktemp("uninterrupted") / "model"
    train(*args, "--output-dir", out)
    return args, out


@contextlib.contextmanager
def serve(fastapi_app):
    """`fastapi_app` served by uvicorn on a free loopback port, as app.py serves it; yields the base URL."""
    import threading
    import time

    import uvicorn

    uv = uvicorn.Server(uvicorn.Config(fastapi_app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not uv.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{uv.config.port}/"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


def create_served_app(model_folder, *app_options: str, limits=None):
    """The FastAPI app that `python app.py --model <model_folder> <app_options>` serves, built by app.py itself;
    `limits` (classifier.security.Limits) replace the defaults where a test needs small ones."""
    import app
    from classifier.security import Limits

    return app.build(app.parser.parse_args(["--model", str(model_folder), *app_options]), limits or Limits())


@pytest.fixture(scope="session")
def server(trained):
    """The app as app.py serves it (FastAPI + mounted Gradio) on a free loopback port: (url, model folder)."""
    with serve(create_served_app(trained)) as url:
        yield url, str(trained)
