"""What a training run changes as it goes: one object, checkpointed, evaluated and exported as a whole."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch


class TrainingError(RuntimeError):
    """The run cannot continue; the message says why and what is kept."""


def new_running() -> dict:
    return {"loss": 0.0, "correct": 0.0, "seen": 0.0, "seconds": 0.0}


@dataclass
class Progress:
    """Where the run is, the same on every process; saved in every checkpoint so a resumed run continues
    mid-epoch exactly."""

    epoch: int = 0
    batches_done: int = 0  # batches of `epoch` already trained
    optimizer_steps: int = 0
    skipped_steps: int = 0  # fp16 updates the gradient scaler skipped (overflow); the lr schedule did not advance
    compute_dtype: str = ""  # of the model's output in training: what mixed precision really did
    # sums over every process since the epoch began: loss (of the processes' mean, per batch), correct, seen
    running: dict = field(default_factory=new_running)
    history: list = field(default_factory=list)
    skipped_train: list = field(default_factory=list)  # streamed images that failed to decode (--skip-bad-images)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


@dataclass
class TrainState:
    """Everything training updates. A checkpoint saves all of it; every evaluation and the export use
    `eval_model`: the weights' moving average when there is one (--model-ema), else the model."""

    model: torch.nn.Module  # as accelerate prepared it (DDP, compiled)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    progress: Progress = field(default_factory=Progress)
    ema: torch.nn.Module | None = None  # timm's ModelEmaV3 over the unwrapped model, updated every optimizer step

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model
