"""timm models: creation (scratch, timm Hub weights or a local weights file), export to timm's Hub
format, and loading such a folder back from disk or the Hub."""
from __future__ import annotations

import difflib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import timm
import timm.data
import torch
from timm.models import save_for_hf

from .hub import hub_unreachable, names_local_path
from .options import TTA_CHOICES

log = logging.getLogger(__name__)
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class ModelSourceError(RuntimeError):
    """A model or weights source cannot be used; the message says why."""


@dataclass(frozen=True)
class StartingWeights:
    """Where a run's weights come from, decided before anything is trained: it chooses the recipe (fine-tuning
    or from scratch), and the model card names it as the base model."""
    kind: str  # "scratch", "hub" (timm's weights on the Hub) or "file" (--pretrained-file)
    file: str | None = None  # the weights file to load (for "hub": in huggingface_hub's cache)
    hub_id: str | None = None  # the Hub repo of "hub" weights, e.g. timm/resnet18.a1_in1k
    revision: str | None = None  # the commit of that repo the file came from
    license: str | None = None  # of the weights, as timm's pretrained config states it
    why: str = ""  # for the run's log: why these weights

    @property
    def pretrained(self) -> bool:
        return self.kind != "scratch"

    def describe(self) -> str:
        """How the card, the log and training_args.json name the weights."""
        if self.kind == "hub":
            return f"hf-hub:{self.hub_id}" + (f"@{self.revision}" if self.revision else "")
        if self.kind == "file":
            return f"file:{Path(self.file).name}"  # the name only: a local path means nothing elsewhere
        return "scratch"


def check_model_name(name: str) -> None:
    """A timm architecture name (or hf-hub:owner/name) that timm knows; else the error names the closest ones."""
    if name.startswith("hf-hub:") or timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    raise ModelSourceError(f"--model {name!r} is not a timm model" +
                           (f"; did you mean {', '.join(close)}?" if close else
                            " (timm.list_models() lists them; hf-hub:<owner>/<name> names a Hub repo)."))


def resolve_weights(name: str, pretrained: bool | None = None, pretrained_file: str | None = None,
                    cached_only: bool = False) -> StartingWeights:
    """Decide where the weights of `name` come from, fetching timm's Hub weights into the cache if needed.

    pretrained=None means "if available": the Hub's weights when it is reachable, else the ones cached earlier,
    else from scratch with a warning. pretrained=True fails at once when neither can be had. `cached_only` looks
    only in the cache (the other processes of a run, after the main process fetched the file).
    """
    if pretrained_file:
        if not Path(pretrained_file).is_file():
            raise ModelSourceError(f"--pretrained-file {pretrained_file!r} does not exist.")
        return StartingWeights("file", file=str(pretrained_file), why="--pretrained-file")
    if pretrained is False:
        return StartingWeights("scratch", why="--no-pretrained")
    # "resnet18" is timm's default tag of it (resnet18.a1_in1k, weights in timm/resnet18.a1_in1k); an
    # "hf-hub:owner/name" model is that repo
    cfg = None if name.startswith("hf-hub:") else timm.models.get_pretrained_cfg(name)
    hub_id = name.removeprefix("hf-hub:") if name.startswith("hf-hub:") else cfg and cfg.hf_hub_id
    if not hub_id:
        if pretrained:
            raise ModelSourceError(f"timm has no Hub weights for {name!r}.")
        return StartingWeights("scratch", why=f"timm has no Hub weights for {name!r}")
    from huggingface_hub import hf_hub_download, is_offline_mode

    unreachable = None if cached_only else hub_unreachable()
    try:
        # only the safetensors file: timm would fall back to a pickled pytorch_model.bin
        path = hf_hub_download(hub_id, WEIGHTS_NAME, local_files_only=cached_only or bool(unreachable))
    except Exception as e:
        reason = (f"the Hub cannot be reached ({unreachable}) and they are not in the local cache" if unreachable
                  else f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        if pretrained:
            raise ModelSourceError(f"Cannot load pretrained weights for {name!r} ({hub_id}): {reason}.") from e
        log.warning("Pretrained weights for %r unavailable (%s); training from scratch.", name, reason)
        return StartingWeights("scratch", why=f"no weights for {name!r} could be had ({reason})")
    # huggingface_hub's cache keeps each file under snapshots/<commit>/: the revision the weights came from
    revision = Path(path).parent.name
    why = (f"cached earlier (the Hub cannot be reached: {unreachable})" if unreachable else
           "cached earlier (HF_HUB_OFFLINE)" if is_offline_mode() else "the Hub's")
    return StartingWeights("hub", file=path, hub_id=hub_id, revision=revision, license=cfg and cfg.license,
                           why=why)


def create_model(name: str, num_classes: int, weights: StartingWeights, **model_args) -> torch.nn.Module:
    """Build `name` with a fresh `num_classes` head on the given starting weights (timm drops their classifier
    whenever `num_classes` is not its config's, 1000 for ImageNet weights: a file's head of as many classes too)."""
    if not weights.pretrained:
        return without_source(timm.create_model(name, pretrained=False, num_classes=num_classes, **model_args))
    try:
        model = timm.create_model(name, pretrained=True, num_classes=num_classes,
                                  pretrained_cfg_overlay=dict(file=weights.file), **model_args)
    except Exception as e:
        raise ModelSourceError(f"Cannot load the weights {weights.describe()} into {name!r}: "
                               f"{type(e).__name__}: {e}") from e
    # timm's config describes its own Hub weights; a --pretrained-file is someone else's
    return model if weights.kind == "hub" else without_source(model)


# what timm's pretrained_cfg says about the weights of its default tag (ImageNet's, for resnet18): their paper,
# where they come from, their licence. A model trained from scratch, or from a weights file, has none of it.
SOURCE_WEIGHTS_KEYS = ("paper_ids", "paper_name", "origin_url", "notes", "license", "hf_hub_id", "url", "file")


def without_source(model: torch.nn.Module) -> torch.nn.Module:
    model.pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in SOURCE_WEIGHTS_KEYS}
    return model


def data_config(img_size: int, mean, std, interpolation: str = "bilinear", crop_pct: float = 1.0) -> dict:
    return dict(input_size=(3, img_size, img_size), mean=tuple(mean), std=tuple(std),
                interpolation=interpolation, crop_pct=crop_pct, crop_mode="center")


def export(model: torch.nn.Module, folder: str | Path, label_names: list[str], data_cfg: dict,
           model_args: dict | None = None, tag: str | None = None, tta: str = "none",
           calibration: dict | None = None) -> None:
    """Write config.json + model.safetensors in timm's Hub format (what `push_to_hf_hub` uploads). The keys timm
    ignores carry how the app predicts: `test_time_augmentation`, and from `calibration` the `temperature` and the
    `low_confidence_threshold`."""
    model_config = {"label_names": list(label_names), "test_time_augmentation": tta,
                    **calibration_keys(calibration)}
    if tag:
        model_config["pretrained_cfg"] = {"tag": tag}
    save_for_hf(model, str(folder), model_config=model_config, model_args=model_args or None,
                data_config=data_cfg, safe_serialization=True)
    # safetensors writes its file readable by its owner alone (0600); the weights are read as the card and config
    # are, by a server or container running as another user
    shutil.copymode(Path(folder) / CONFIG_NAME, Path(folder) / WEIGHTS_NAME)


def calibration_keys(calibration: dict | None) -> dict:
    """config.json's calibration keys from metrics.json's calibration record (none without one)."""
    if not calibration:
        return {}
    return {"temperature": round(calibration["temperature"], 6),
            "low_confidence_threshold": round(calibration["low_confidence_threshold"], 6)}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    label_names: list[str]
    data_config: dict  # timm's resolved data config: input_size, mean, std, interpolation, crop_pct
    folder: Path
    config: dict

    def transform(self):
        return timm.data.create_transform(**self.data_config, is_training=False)

    @property
    def tta(self) -> str:
        return self.config.get("test_time_augmentation", "none")  # folders written before it existed: none

    @property
    def temperature(self) -> float:
        """The calibration temperature (config.json `temperature`); 1 for folders fitted before it existed."""
        return float(self.config.get("temperature", 1.0))

    @property
    def low_confidence_threshold(self) -> float | None:
        """Calibrated top probabilities under this get the "may not be one of the classes" hint (None: no hint)."""
        value = self.config.get("low_confidence_threshold")
        return None if value is None else float(value)


def view_logits(model: torch.nn.Module, images: torch.Tensor, tta: str) -> torch.Tensor:
    """The logits of each test-time view of a normalised NCHW batch, as float: shape (views, N, classes); view 0 is
    the image itself. The mirror images ride in the same forward pass as the originals: one pass over 2N images
    costs less than two over N."""
    views = torch.cat([images, images.flip(-1)]) if tta == "flip" else images
    logits = model(views).float()
    return logits.view(-1, len(images), logits.shape[-1])


def view_probabilities(model: torch.nn.Module, images: torch.Tensor, tta: str,
                       temperature: float = 1.0) -> torch.Tensor:
    """Class probabilities of each test-time view, (views, N, classes): their mean is the prediction. `temperature`
    divides the logits first (calibration: classifier.calibration fits it; 1 leaves the softmax as it is)."""
    return (view_logits(model, images, tta) / temperature).softmax(-1)


def load_folder(folder: str | Path) -> LoadedModel:
    """Rebuild a model from a folder in timm's Hub format; only safetensors weights are accepted."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file():
        raise ModelSourceError(f"{folder} is not a model folder: {CONFIG_NAME} is missing.")
    if not weights_path.is_file():
        others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pth"))
        extra = f" (found {', '.join(others)}; pickled weights are never loaded)" if others else ""
        raise ModelSourceError(f"{folder} has no {WEIGHTS_NAME}{extra}.")
    try:
        config = json.loads(config_path.read_text())
        model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    except Exception as e:
        raise ModelSourceError(f"Cannot load the model in {folder}: {type(e).__name__}: {e}") from e
    model.eval()
    num_classes = model.num_classes
    label_names = list(config.get("label_names") or [str(i) for i in range(num_classes)])
    if len(label_names) != num_classes:
        raise ModelSourceError(f"{folder}: {len(label_names)} label names for {num_classes} classes.")
    temperature = config.get("temperature", 1.0)
    if not isinstance(temperature, (int, float)) or not 0 < temperature < 1e3:
        raise ModelSourceError(f"{folder}: temperature {temperature!r} in {CONFIG_NAME} is not a positive number.")
    if config.get("test_time_augmentation", "none") not in TTA_CHOICES:
        raise ModelSourceError(f"{folder}: unknown test_time_augmentation {config['test_time_augmentation']!r} "
                               f"in {CONFIG_NAME} (known: {', '.join(TTA_CHOICES)}).")
    return LoadedModel(model, label_names, timm.data.resolve_data_config(model=model), folder, config)


HUB_FILES = ["*.json", "*.md", "*.png", WEIGHTS_NAME, "samples/**"]


def download(repo_id: str, revision: str | None = None, token: str | bool | None = None,
             cached_only: bool = False) -> Path:
    """Fetch a model repo into huggingface_hub's cache (or only look there); only safetensors weights are
    requested."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, revision=revision, token=token, allow_patterns=HUB_FILES,
                                  local_files_only=cached_only))


def load(source: str | Path, revision: str | None = None, token: str | bool | None = None) -> LoadedModel:
    """A local folder, or a Hub model id (downloaded and cached by huggingface_hub)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return load_folder(path)
    if path.exists():
        raise ModelSourceError(f"{source} is a file, not a model folder.")
    # unlike a dataset, a bare model name is taken for a folder (Hub model ids are given as owner/name)
    if names_local_path(str(source)) or "/" not in str(source):
        raise ModelSourceError(f"{source}: no such model folder.")
    # with the Hub out of reach, the cache at once instead of huggingface_hub's 23 s of retries first
    unreachable = hub_unreachable()
    try:
        folder = download(str(source), revision=revision, token=token, cached_only=bool(unreachable))
    except Exception as e:
        reason = (f"the Hub cannot be reached ({unreachable}) and it is not in the local cache" if unreachable
                  else f"{type(e).__name__}: {e}")
        raise ModelSourceError(f"Cannot download {source!r} from the Hub ({reason}). If it is a local folder, it "
                               "does not exist here.") from e
    return load_folder(folder)


def replace_folder_contents(staging: Path, target: Path) -> None:
    """Move the files of a fully written `staging` folder into `target`, config.json last, so a crash
    never leaves a folder that looks like a complete model."""
    target.mkdir(parents=True, exist_ok=True)
    entries = sorted(staging.iterdir(), key=lambda p: p.name == CONFIG_NAME)
    for entry in entries:
        destination = target / entry.name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        os.replace(entry, destination)
    staging.rmdir()
