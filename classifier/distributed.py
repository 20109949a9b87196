"""The rules for training on N processes, each in one place.

- Randomness (`seed_processes`): each process seeds `random`, numpy and torch with `--seed` + its rank, so
  augmentation (torch), random erasing (`random` and torch), mixup/cutmix (numpy) and dropout (torch) draw
  differently on each process. The data order and its sharding do not use these generators: they come from a
  generator of their own seeded by (seed, epoch) (engine.train_batches), the same on every process. The initial
  weights differ per process too, but DDP copies process 0's to the others when accelerate prepares the model.
- Failures (`together`, `agreed`): a run-ending error found on one process must end every process with that
  error, not leave the others waiting in a collective until it times out. Errors are exchanged at points every
  process reaches anyway: after each block of set-up work, and in the training loop's periodic reduction of its
  statistics. Then every process raises the same error, the main process prints it once, and all exit with 2.
- Waiting (`process_group_kwargs`): while the main process of a machine decodes the data set into the cache
  (in DataLoader workers), the others wait in a collective; its timeout is `--ddp-timeout`.
- Memory (`local_process_count`): the processes of one machine share its RAM; the decoded cache is a
  memory-mapped file they all read (data.decode_split).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from datetime import timedelta

from accelerate import Accelerator, PartialState
from accelerate.utils import InitProcessGroupKwargs, gather_object, set_seed

from .data import DataError
from .hub import HubError
from .model import ModelSourceError
from .state import TrainingError

# errors that end a run with a one-line message and exit status 2; anything else is a bug and keeps its traceback
RUN_ENDING = (DataError, HubError, ModelSourceError, TrainingError, OSError)


def process_group_kwargs(timeout_seconds: float) -> InitProcessGroupKwargs:
    return InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_seconds))


def seed_processes(seed: int) -> None:
    set_seed(seed, device_specific=True)  # seed + process index; one process: exactly `seed`


def local_process_count(accelerator: Accelerator) -> int:
    """Processes on this machine (torchrun and accelerate launch set LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))


def agreed(error: Exception) -> Exception:
    """Mark an error that every process raises at the same point, so that only the main process prints it."""
    error.on_every_process = True
    return error


def on_every_process(error: Exception) -> bool:
    return getattr(error, "on_every_process", False)


@contextmanager
def together(accelerator: Accelerator):
    """Run a block on every process; a run-ending error on any of them ends the block on all of them with that
    error (the first by rank). The block itself must not wait for the other processes."""
    failure = None
    try:
        yield
    except RUN_ENDING as error:
        failure = error
    if accelerator.num_processes > 1:
        failures = [f for f in from_every_process(failure) if f is not None]
        if failures:
            raise agreed(failures[0]) from None
    elif failure is not None:
        raise failure


def from_every_process(value) -> list:
    """`value` as each process has it, by rank (one process: [value], without accelerate's gather_object, which
    XLA does not have)."""
    return gather_object([value]) if PartialState().num_processes > 1 else [value]
