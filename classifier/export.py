"""The model folder a run leaves: weights and config.json in timm's Hub format, metrics, the record of how it
was trained, plots and the model card. Written by one process, staged, and moved in with config.json last."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from . import report
from .calibration import plot_reliability
from .model import data_config, export, replace_folder_contents
from .options import dataset_slug
from .presets import PRESETS, find_preset
from .record import RunRecord, public_command, public_path
from .state import TrainingError


def dataset_label(spec: str) -> str:
    """How the card and the plots name a dataset: a preset by its Hub id, a Hub id as it is, a local folder by its
    name (its path says nothing to a reader elsewhere)."""
    if spec in PRESETS:
        return PRESETS[spec].path
    path = Path(spec).expanduser()
    return path.resolve().name if path.exists() else spec


def check_output_dir(output_dir: Path, needed_bytes: int) -> None:
    """Fail before training, not after an hour of it, if the model folder cannot be written."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write-test"
        probe.write_bytes(b"0" * 1024)
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"Cannot write to --output-dir {output_dir}: {e}") from e
    free = shutil.disk_usage(output_dir).free
    if free < needed_bytes:
        raise TrainingError(f"Only {free / 2**20:.0f} MB free at {output_dir}; this run needs about "
                            f"{needed_bytes / 2**20:.0f} MB (model folder and checkpoints).")


def write_model_folder(record: RunRecord, model, metrics: dict, data_note: str, add_extra_files) -> None:
    """Everything is written to a staging folder first and moved in at the end (config.json last). `data_note`:
    for the card, where the evaluated split came from when it was not the Hub (data.local_copy_note)."""
    options = record.options
    output_dir = Path(options.output_dir)
    staging = output_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    preset = find_preset(options.dataset)
    # safetensors stores contiguous CPU tensors only (channels_last was for speed; XLA tensors have no storage)
    model = model.to("cpu", memory_format=torch.contiguous_format, dtype=getattr(torch, options.weights_dtype))
    label_names, final, final_split = metrics["label_names"], metrics["final"], metrics["final_split"]
    calibration = final.get("calibration")
    export(model, staging, label_names, data_config(options.img_size, mean, std), record.model_args,
           tag=dataset_slug(options.dataset), tta=options.tta, calibration=calibration)
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (staging / "training_args.json").write_text(json.dumps(record.published(), indent=2, default=str))
    if metrics["history"]:
        report.plot_curves(metrics["history"], staging / report.CURVES_NAME)
    if calibration:
        plot_reliability(calibration, staging / report.CALIBRATION_NAME,
                         f"Calibration, {final_split} (temperature {calibration['temperature']:.3g})")
    dataset = dataset_label(options.dataset)
    report.plot_confusion(final["confusion_matrix"], label_names, staging / report.CONFUSION_NAME,
                          f"{options.model} on {dataset} ({final_split})")
    repo_name = options.push_to_hub or f"{options.model}-{dataset_slug(options.dataset)}"
    card = report.model_card(repo_name, options.model, dataset, preset.path if preset else None, label_names,
                             final, final_split, public_command(options.command), options.img_size,
                             replace(record.weights, file=public_path(record.weights.file)),
                             record.describe(), calibration, data_note)
    card.save(staging / "README.md")
    add_extra_files(staging)
    replace_folder_contents(staging, output_dir)
