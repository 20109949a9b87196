"""Predictor: one loaded model and everything the app and the REST endpoint ask of it."""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .explain import class_activation, overlay
from .hardware import cpu_supports_bf16
from .images import open_rgb
from .model import LoadedModel, ModelSourceError, load, view_probabilities
from .security import public_name

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUNDLED_MODELS = PROJECT_ROOT / "models"


def _cgroup_cpu_quota(cgroup: Path) -> float | None:
    """The CPU quota in cores (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us`), None when there is none."""
    try:
        if (cgroup / "cpu.max").is_file():  # "<quota> <period>", or "max <period>"
            quota, period = (cgroup / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())  # -1: no quota
        return quota / int((cgroup / "cpu" / "cpu.cfs_period_us").read_text()) if quota > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup's quota (a container, a Space
    among them, can see every core of its host and still be allowed only a few cores' worth)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_cpu_quota(cgroup)
    return max(1, min(cpus, math.ceil(quota))) if quota else cpus


def app_torch_threads() -> int:
    """Threads for the app's forward passes: one core fewer than the process may use, so uvicorn's and
    Gradio's own work (uploads, the queue, events) keeps a core under load. On the 2-core machine one
    thread instead of two raised 16-client throughput by 28-38 % and cost 8 ms of single-request latency
    (benchmarks/app_env_ab.py, docs/PERFORMANCE.md); OpenMP's passive wait policy and shorter spins gained less."""
    return max(1, usable_cpus() - 1)


def _start_torch_thread():
    _on_torch_thread.flag = True
    # the user's own setting wins. (torch also makes this the default of threads that first use torch
    # later in this process; in the app they do not, every forward pass runs here.)
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(app_torch_threads())


# All of the app's torch work (loading the models, every forward pass) runs on this one thread: called from
# Gradio's and FastAPI's worker threads, a model loaded on another thread ran at single-thread speed, about
# 1.6x the latency (benchmarks/inference_threads.py, docs/PERFORMANCE.md; likely each thread's own OpenMP
# team competing for the cores). One thread also serialises requests, so two never fight over the cores.
_on_torch_thread = threading.local()
_torch_thread = ThreadPoolExecutor(1, thread_name_prefix="torch", initializer=_start_torch_thread)
MAX_BATCH = 32  # waiting requests run together up to this many images


def _in_torch_thread() -> bool:
    return getattr(_on_torch_thread, "flag", False)


def on_torch_thread(fn, *args):
    """`fn(*args)` on the app's torch thread (directly when already there), its result or its exception."""
    if _in_torch_thread():
        return fn(*args)
    return _torch_thread.submit(fn, *args).result()


def torch_thread_answers(timeout_s: float) -> bool:
    """Whether the torch thread runs a no-op within `timeout_s`: False when it is wedged (or held that long by work
    queued before it, which a health check should report as well)."""
    if _in_torch_thread():
        return True
    try:
        _torch_thread.submit(lambda: None).result(timeout_s)
        return True
    except TimeoutError:  # concurrent.futures' since Python 3.11
        return False


@dataclass
class Sample:
    path: Path
    label: str
    kind: str  # "gallery": random test images; "failure": misclassified test images


INFERENCE_PRECISIONS = ("auto", "fp32", "bf16")


def inference_precision(choice: str = "auto") -> str:
    """The precision of the app's forward passes (all on the CPU): `auto` is bf16 autocast where the CPU has native
    bf16 kernels (AVX-512 BF16 / AMX), which training uses there too, else fp32. Measured on the bundled models:
    the same test accuracy within 0.1 point, and faster (docs/PERFORMANCE.md, docs/RESULTS.md)."""
    if choice not in INFERENCE_PRECISIONS:
        raise ValueError(f"inference precision must be one of {INFERENCE_PRECISIONS}, got {choice!r}")
    if choice == "auto":
        return "bf16" if cpu_supports_bf16() else "fp32"
    return choice


class Predictor:
    def __init__(self, loaded: LoadedModel, name: str, precision: str = "auto"):
        self.name, self.loaded = name, loaded
        self.precision = inference_precision(precision)
        self.model = loaded.model.eval()
        self.label_names = loaded.label_names
        self.transform = loaded.transform()
        self.input_size = loaded.data_config["input_size"][-1]
        folder = loaded.folder
        self.metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").is_file() else {}
        args_path = folder / "training_args.json"
        self.training_args = json.loads(args_path.read_text()) if args_path.is_file() else {}
        self.samples = _read_samples(folder)
        self._waiting: list[tuple[Image.Image, Future]] = []
        self._waiting_lock = threading.Lock()

    @property
    def folder(self) -> Path:
        return self.loaded.folder

    def probabilities(self, images: list[Image.Image]) -> torch.Tensor:
        return on_torch_thread(self._probabilities, images)

    def probability(self, image: Image.Image) -> torch.Tensor:
        """One image's class probabilities. Requests that arrive while the torch thread is busy wait in a
        list and run as one batch when it frees up: one forward pass over n images costs less than n passes
        (fewer thread hand-offs and OpenMP barriers on a CPU, far fewer kernel launches on a GPU)."""
        if _in_torch_thread():
            return self._probabilities([image])[0]
        future = Future()
        with self._waiting_lock:
            self._waiting.append((image, future))
        _torch_thread.submit(self._run_waiting)  # the first of these to run takes every request waiting by then
        return future.result()

    def _run_waiting(self):
        with self._waiting_lock:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
        if not batch:
            return
        try:
            probs = self._probabilities([image for image, _ in batch])
        except Exception as e:  # every waiting caller gets the error, none is left hanging
            for _, future in batch:
                future.set_exception(e)
            return
        for (_, future), p in zip(batch, probs):
            future.set_result(p)

    def _probabilities(self, images: list[Image.Image]) -> torch.Tensor:
        batch = torch.stack([self.transform(image) for image in images])
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=self.precision == "bf16"):
            return view_probabilities(self.model, batch, self.loaded.tta, self.loaded.temperature).mean(0)

    def explain(self, image: Image.Image, class_index: int | None = None) -> tuple[Image.Image, int, torch.Tensor]:
        """A heatmap of where the model looked for `class_index` (default: the predicted class), over `image`;
        -> (the overlay at the image's size, the class, the image's calibrated probabilities). Raises ExplainError."""
        return on_torch_thread(self._explain, image, class_index)

    def _explain(self, image: Image.Image, class_index: int | None):
        probs = self._probabilities([image])[0]
        index = int(probs.argmax()) if class_index is None else class_index
        # the image itself, not its mirror: a heatmap of the average would blur the two views together
        cam = class_activation(self.model, self.transform(image).unsqueeze(0), index)
        return overlay(image, cam, self.loaded.data_config.get("crop_pct", 1.0)), index, probs

    def low_confidence(self, top_probability: float) -> bool:
        """True when the calibrated top probability is under the model's threshold (config.json
        `low_confidence_threshold`, chosen on validation): the image may not be one of the model's classes."""
        threshold = self.loaded.low_confidence_threshold
        return threshold is not None and top_probability < threshold

    def top_k(self, probs: torch.Tensor, k: int) -> list[tuple[str, float]]:
        k = max(1, min(int(k), len(self.label_names)))
        values, indices = probs.topk(k)
        return [(self.label_names[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]

    def classify(self, source: bytes | str | Image.Image, k: int = 5, name: str = "image"):
        """-> (top-k [(label, probability)], milliseconds, (width, height)); raises BadImageError."""
        image = source if isinstance(source, Image.Image) else open_rgb(source, name=name)
        start = time.perf_counter()
        probs = self.probability(image)
        return self.top_k(probs, k), 1000 * (time.perf_counter() - start), image.size

    def classify_many(self, images: list[Image.Image], k: int = 5, batch_size: int = 32):
        results = []
        for i in range(0, len(images), batch_size):
            probs = self.probabilities(images[i:i + batch_size])
            results.extend(self.top_k(p, k) for p in probs)
        return results


def _read_samples(folder: Path) -> list[Sample]:
    manifest = folder / "samples" / "manifest.json"
    if not manifest.is_file():
        return []
    entries = json.loads(manifest.read_text())
    return [Sample(folder / "samples" / e["file"], e["label"], e["kind"]) for e in entries
            if (folder / "samples" / e["file"]).is_file()]


def bundled_model_folders() -> list[Path]:
    return sorted(p.parent for p in BUNDLED_MODELS.glob("*/config.json"))


def load_predictors(source: str | None = None, revision: str | None = None, fallback: bool = False,
                    precision: str = "auto") -> tuple[dict[str, Predictor], str]:
    """The models the app serves, and a notice for the UI.

    `source` (a Hub id or a folder) comes first; the bundled models follow. A `source` that cannot be loaded raises
    ModelSourceError, unless `fallback` (`source` is the MODEL_ID variable, a Space's setting: a visitor should see
    the bundled models rather than a dead Space), where the app starts with the bundled models and the notice says
    so; with no bundled model either, the ModelSourceError says that the MODEL_ID variable is what to fix.
    """
    return on_torch_thread(_load_predictors, source, revision, fallback, precision)


def _load_predictors(source: str | None, revision: str | None, fallback: bool,
                     precision: str) -> tuple[dict[str, Predictor], str]:
    predictors: dict[str, Predictor] = {}
    failure = None  # why the MODEL_ID model (`source` with `fallback`) cannot be loaded
    if source:
        name = public_name(source)
        try:
            predictors[name] = Predictor(load(source, revision=revision, token=os.environ.get("HF_TOKEN")), name,
                                         precision)
        except ModelSourceError as e:
            if not fallback:
                raise
            failure = e
    for folder in bundled_model_folders():
        try:
            predictors.setdefault(folder.name, Predictor(load(folder), folder.name, precision))
        except ModelSourceError as e:
            log.warning("Skipping bundled model %s: %s", folder.name, e)
    if failure is not None:
        # the model came from the MODEL_ID variable (a Space's setting): that variable is what to fix, and the
        # message says whether bundled models stand in (a Space made by deploy-space has none)
        problem = f"The MODEL_ID variable names a model that cannot be loaded ({name!r})"
        if not predictors:
            raise ModelSourceError(f"{problem}: {failure} Set MODEL_ID to a Hub model id (owner/name) that this "
                                   "app can download; a private model also needs the HF_TOKEN secret.")
        log.warning("%s: %s Showing the bundled model(s) instead.", problem, failure)
        return predictors, (f"Could not load the model {name!r} named by the MODEL_ID variable (the server log "
                            "says why). Showing the bundled model(s) instead.")
    if not predictors:
        raise ModelSourceError(f"No model to serve: no --model/MODEL_ID given and no bundled model in "
                               f"{BUNDLED_MODELS}. Train one with train_accelerate.py and pass --model <folder>.")
    return predictors, ""
