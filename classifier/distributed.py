"""The rules for training on N processes, each in one place.

- Randomness (`seed_processes`): each process seeds `random`, numpy and torch with `--seed` + its rank, so
  augmentation (torch), random erasing (`random` and torch), mixup/cutmix (numpy) and dropout (torch) draw
  differently on each process. The data order and its sharding do not use these generators: they come from a
  generator of their own seeded by (seed, epoch) (engine.train_batches), the same on every process. The initial
  weights differ per process too, but DDP copies process 0's to the others when accelerate prepares the model.
- Failures (`together`, `end_run`): a run-ending error found on one process must end every process with that
  error, not leave the others waiting in a collective until it times out. Errors are exchanged at points every
  process reaches anyway: after each block of set-up work (`together`), and where every process holds the same
  numbers (the training loop's reduced losses and its count of undecodable images, the gathered evaluation
  logits). Every process then raises the same error, and `end_run` ends them: processes that ended together meet
  once more, the main process prints the error, and all exit with 2 at once; a process that ended alone (a
  collective timed out on it) finds nobody to meet and prints its own.
- Waiting (`process_group_kwargs`, `together(patience_s=...)`): every collective times out after
  `--collective-timeout` (10 minutes), so a process that stops answering in training ends the run in minutes.
  Where one process does a long job the others have to wait for (the main process of a machine downloading the
  weights or decoding the data set into the cache, the main process writing the model folder), they wait on the
  process group's store instead, for up to `--ddp-timeout` (2 hours), then meet in the collective.
- Memory (`local_process_count`): the processes of one machine share its RAM; the decoded cache is a
  memory-mapped file they all read (data.decode_split).
"""
from __future__ import annotations

import itertools
import os
import sys
from contextlib import contextmanager
from datetime import timedelta
from typing import NoReturn

import torch.distributed as dist

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


_arrivals = itertools.count()  # the same sequence of meeting points on every process
# how long a process that ends the run waits for the others to end it too: processes that raised the same error
# arrive within moments of each other
ENDING_TOGETHER_S = 10


def all_arrive(point: str, timeout_s: float) -> bool:
    """Whether every process arrives at `point` within `timeout_s`, waiting on the process group's store (each
    sets a key and waits for all of them), unlike a collective, whose timeout is the process group's. XLA's
    processes have no store: True at once (they meet in the collective that follows), as for one process."""
    state = PartialState()
    if state.num_processes == 1 or not dist.is_initialized():
        return True
    store = dist.distributed_c10d._get_default_store()
    store.set(f"classifier/{point}/{state.process_index}", "1")
    try:
        store.wait([f"classifier/{point}/{rank}" for rank in range(state.num_processes)], timedelta(seconds=timeout_s))
    except RuntimeError:  # the store's timeout (DistStoreError, a RuntimeError)
        return False
    return True


def wait_for_all(timeout_s: float) -> None:
    if not all_arrive(f"arrived/{next(_arrivals)}", timeout_s):
        raise TrainingError(f"Waited {timeout_s:g} s for the other processes; raise --ddp-timeout if one of them "
                            f"has a long job (downloading the weights, decoding a large data set).")


def end_run(message: str) -> NoReturn:
    """Print a run-ending error once and exit with 2, on every process. Processes that raised the same error meet
    here: the main process prints it, and all leave at once, together (os._exit): the launcher stops the remaining
    processes as soon as one has exited, and an interpreter's shutdown would give it time to catch the others
    before they exit with 2. A process that does not meet the others within ENDING_TOGETHER_S ended alone, and
    prints its own error. (Without a store, on XLA, each process prints.)"""
    state = PartialState()
    met = state.num_processes > 1 and dist.is_initialized() and all_arrive("ended", ENDING_TOGETHER_S)
    if state.is_main_process or not met:
        print(f"error: {message}", file=sys.stderr, flush=True)
    if state.num_processes == 1:
        sys.exit(2)
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(2)


@contextmanager
def together(accelerator: Accelerator, patience_s: float | None = None):
    """Run a block on every process; a run-ending error on any of them ends the block on all of them with that
    error (the first by rank). The block itself must not wait for the other processes. With `patience_s`, for
    blocks where some processes have far more to do than others, the others wait that long for them (otherwise
    the collective's timeout)."""
    failure = None
    try:
        yield
    except RUN_ENDING as error:
        failure = error
    if patience_s is not None:
        wait_for_all(patience_s)
    if accelerator.num_processes > 1:
        failures = [f for f in from_every_process(failure) if f is not None]
        if failures:
            raise failures[0] from None
    elif failure is not None:
        raise failure


def from_every_process(value) -> list:
    """`value` as each process has it, by rank (one process: [value], without accelerate's gather_object, which
    XLA does not have)."""
    return gather_object([value]) if PartialState().num_processes > 1 else [value]
