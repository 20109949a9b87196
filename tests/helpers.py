"""What the tests share besides fixtures: generated images and datasets, the training entry point run in-process, and
a real server on a free port. Fixtures are in conftest.py; tests import these from here."""
from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from pathlib import Path

import datasets
import numpy as np
from PIL import Image, ImageDraw

CLASSES = ["red", "green", "blue", "yellow"]
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
# timm's own test ResNet (370 k parameters, the same model code as resnet18's): a step takes an eighth of
# resnet18's time and the blobs are learnt sooner. Tests of what is resnet18's own (the served model, its Hub
# weights and weights files, the strided convolutions its bf16 guard counts) name resnet18 themselves.
TEST_MODEL = ["--model", "test_resnet"]
# a small training run: tiny images, no pretrained weights to fetch, the test model
FAST = [*TEST_MODEL, "--img-size", "32", "--batch-size", "32", "--no-pretrained", "--eval-batch-size", "64"]


def noise_image(size: tuple[int, int], rng: random.Random, sigma: float = 40) -> Image.Image:
    """Grey Gaussian noise drawn from `rng` (PIL's effect_noise ignores every seed: its images differed run to run)."""
    pixels = np.random.default_rng(rng.getrandbits(64)).normal(128, sigma, (size[1], size[0]))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "L").convert("RGB")


def shape_image(label: str, rng: random.Random, size: int = 32, mode: str = "RGB") -> Image.Image:
    """A noisy grey background with a randomly placed blob whose colour is the class."""
    image = noise_image((size, size), rng)
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


def write_parquet_repo(folder: Path, splits: dict, image_column="img", label_column="fine_label") -> Path:
    features = datasets.Features({image_column: datasets.Image(), label_column: datasets.ClassLabel(names=CLASSES)})
    for split, examples in splits.items():
        ds = datasets.Dataset.from_dict(
            {image_column: [im for im, _ in examples], label_column: [lb for _, lb in examples]}, features=features
        )
        (folder / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def reset_accelerate_state() -> None:
    """accelerate's state is a per-process singleton; each in-process run must start fresh as a new process would."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def train(*args) -> None:
    """The real CLI entry point, in-process."""
    from classifier.train import main

    reset_accelerate_state()
    main([str(a) for a in args])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(fastapi_app):
    """`fastapi_app` served by uvicorn on a free loopback port, as app.py serves it; yields the base URL."""
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
