"""The record of a training run: its options as the run resolved them (the recipe filled in, the lr scaled) and
what it decided or found beyond them, made once when set-up ends (classifier.train.setup). The model folder
publishes it as training_args.json (`published`), with local paths cut to what means something elsewhere, and
the model card says how the model was trained from it (`describe`)."""
from __future__ import annotations

import dataclasses
import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from .model import StartingWeights
from .options import Options

# the options that hold local paths
PATH_OPTIONS = ("dataset", "output_dir", "pretrained_file", "resume")


@dataclass(frozen=True)
class RunRecord:
    options: Options  # as resolved: what the run trained with
    weights: StartingWeights
    model_args: dict  # timm.create_model's extra arguments, recorded in config.json too
    mixed_precision: str  # what accelerate trains in
    mixed_precision_from: str  # hardware.FROM_FLAG, FROM_ACCELERATE or FROM_AUTO
    dynamo_backend: str
    backends: dict  # hardware.configure_backends: deterministic, and on CUDA TF32 and cudnn's autotuner
    recipe: dict  # name, why, the options given on the command line, the recipe's values
    lr: dict  # base, applied, rule, global_batch, reference_batch (train.scaled_lr)
    data_path: str  # "memory" or "stream"
    data_path_budget: dict  # what `--data-path auto` weighed: decoded bytes, local processes, bytes per process
    data_sources: list  # by rank: where each split's images came from (decoded, cache, streamed)
    fp32_on_one_pixel_maps: int  # convolutions hardware.guard_bf16_cpu_convolutions kept off bf16
    hardware: str
    num_processes: int
    distributed_type: str  # accelerate's DistributedType: NO, MULTI_CPU, MULTI_GPU, ...
    num_machines: int
    compute_dtype: str = ""  # measured by the end of the run: what the first layer computed in under autocast
    peak_device_memory_mb: float | None = None  # CUDA: the most this process's tensors took (torch's allocator)

    def describe(self) -> str:
        processes = "1 process" if self.num_processes == 1 else f"{self.num_processes} processes"
        machines = f" on {self.num_machines} machines" if self.num_machines > 1 else ""
        # accelerate's distributed type says nothing of one process ("NO")
        kind = f" (accelerate {self.distributed_type})" if self.distributed_type != "NO" else ""
        return f"{processes}{machines}{kind}, mixed precision {self.mixed_precision}, {self.hardware}"

    def published(self) -> dict:
        """training_args.json: every option; `resolved`, what the run decided; the machine and its processes."""
        options = dataclasses.asdict(self.options)
        weights = self.weights
        return dict(
            options, **{key: public_path(options[key]) for key in PATH_OPTIONS},
            command=public_command(self.options.command),
            resolved={"mixed_precision_from": self.mixed_precision_from, "dynamo_backend": self.dynamo_backend,
                      **self.backends, "recipe": self.recipe,
                      "weights": {"source": weights.describe(), "kind": weights.kind, "hub_id": weights.hub_id,
                                  "revision": weights.revision, "license": weights.license, "why": weights.why},
                      "data_path_budget": self.data_path_budget, "data_sources": self.data_sources, "lr": self.lr,
                      "fp32_on_one_pixel_maps": self.fp32_on_one_pixel_maps},
            weights_source=weights.describe(), resolved_mixed_precision=self.mixed_precision,
            resolved_data_path=self.data_path, hardware=self.hardware, num_processes=self.num_processes,
            distributed_type=self.distributed_type, num_machines=self.num_machines, compute_dtype=self.compute_dtype,
            peak_device_memory_mb=self.peak_device_memory_mb)


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
