"""The model folder a run leaves: weights and config.json in timm's Hub format, metrics, the record of how it
was trained, plots and the model card. Written by one process, staged, and moved in with config.json last."""
from __future__ import annotations

import json
import os
import shlex
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from . import report
from .calibration import plot_reliability
from .model import StartingWeights, data_config, export, replace_folder_contents
from .options import dataset_slug
from .presets import PRESETS, find_preset
from .state import TrainingError


@dataclass
class RunFacts:
    """What the run resolved or found beyond its arguments; recorded next to them in training_args.json."""
    weights: StartingWeights
    model_args: dict
    mixed_precision: str
    data_path: str
    hardware: str
    num_processes: int
    distributed_type: str  # accelerate's DistributedType: NO, MULTI_CPU, MULTI_GPU, ...
    num_machines: int = 1
    compute_dtype: str = ""  # of the model's output in training: what autocast really computed in
    peak_device_memory_mb: float | None = None  # CUDA: the most this process's tensors took (torch's allocator)
    data_note: str = ""  # for the card: where the evaluated split came from when it was not the Hub

    def describe(self) -> str:
        processes = "1 process" if self.num_processes == 1 else f"{self.num_processes} processes"
        machines = f" on {self.num_machines} machines" if self.num_machines > 1 else ""
        return (f"{processes}{machines} (accelerate {self.distributed_type}), mixed precision {self.mixed_precision}, "
                f"{self.hardware}")


# the options of training_args.json that hold local paths
PATH_OPTIONS = ("dataset", "output_dir", "pretrained_file", "resume")


def public_path(value):
    """A local path as the run's published record shows it: an absolute one (or ~) relative to the folder the run
    started in when it lies inside it, else `.../<last part>`; a relative path, a Hub id or a name as given. The
    training machine's folders (a home folder names its user) are nobody's business on the Hub."""
    if not isinstance(value, str) or not value.startswith(("/", "~")):
        return value
    path = Path(value).expanduser()
    if path.is_relative_to(Path.cwd()):
        return os.path.relpath(path) if path != Path.cwd() else "."
    return f".../{path.name}"


def public_command(command: str) -> str:
    """The command line with each local path shown as public_path shows it (`--opt=/a/b` forms included)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    shown = []
    for word in words:
        option, sep, value = word.partition("=")
        shown.append(f"{option}={public_path(value)}" if sep and option.startswith("--") else public_path(word))
    return shlex.join(shown)


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


def write_model_folder(args, model, metrics: dict, facts: RunFacts, add_extra_files) -> None:
    """Everything is written to a staging folder first and moved in at the end (config.json last)."""
    output_dir = Path(args.output_dir)
    staging = output_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    preset = find_preset(args.dataset)
    # safetensors stores contiguous CPU tensors only (channels_last was for speed; XLA tensors have no storage)
    model = model.to("cpu", memory_format=torch.contiguous_format, dtype=getattr(torch, args.weights_dtype))
    label_names, final, final_split = metrics["label_names"], metrics["final"], metrics["final_split"]
    calibration = final.get("calibration")
    export(model, staging, label_names, data_config(args.img_size, mean, std), facts.model_args,
           tag=dataset_slug(args.dataset), tta=args.tta, calibration=calibration)
    (staging / "metrics.json").write_text(json.dumps(metrics, indent=2))
    published = {key: public_path(getattr(args, key)) for key in PATH_OPTIONS}
    training_args = dict(vars(args), **published, command=public_command(args.command),
                         weights_source=facts.weights.describe(),
                         resolved_mixed_precision=facts.mixed_precision, resolved_data_path=facts.data_path,
                         hardware=facts.hardware, num_processes=facts.num_processes,
                         distributed_type=facts.distributed_type, num_machines=facts.num_machines,
                         compute_dtype=facts.compute_dtype, peak_device_memory_mb=facts.peak_device_memory_mb)
    (staging / "training_args.json").write_text(json.dumps(training_args, indent=2, default=str))
    if metrics["history"]:
        report.plot_curves(metrics["history"], staging / report.CURVES_NAME)
    if calibration:
        plot_reliability(calibration, staging / report.CALIBRATION_NAME,
                         f"Calibration, {final_split} (temperature {calibration['temperature']:.3g})")
    dataset = dataset_label(args.dataset)
    report.plot_confusion(final["confusion_matrix"], label_names, staging / report.CONFUSION_NAME,
                          f"{args.model} on {dataset} ({final_split})")
    repo_name = args.push_to_hub or f"{args.model}-{dataset_slug(args.dataset)}"
    card = report.model_card(repo_name, args.model, dataset, preset.path if preset else None, label_names,
                             final, final_split, public_command(args.command), args.img_size,
                             replace(facts.weights, file=public_path(facts.weights.file)),
                             facts.describe(), calibration, facts.data_note)
    card.save(staging / "README.md")
    add_extra_files(staging)
    replace_folder_contents(staging, output_dir)
