"""Resumable checkpoints. `accelerator.save_state` saves the model, the optimizer and each process's RNG
states; the rest of the training state (progress and scheduler) is saved by name, as JSON, next to them,
so a checkpoint that lacks a piece says which on resume, and nothing pickled is loaded but accelerate's own
files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils.constants import OPTIMIZER_NAME, RNG_STATE_NAME, SAFE_MODEL_NAME
from safetensors.torch import load_file, save_file

from .distributed import together
from .state import TrainingError, TrainState

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "training_state.json"
EMA_FILE = "model_ema.safetensors"  # --model-ema's average: weights, saved as such (accelerate would pickle it)


def checkpoint_dir(output_dir) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR


def saved_checkpoints(output_dir) -> list[Path]:
    """The complete checkpoints of a run, oldest first (one still being written is a .partial folder)."""
    return sorted(p for p in checkpoint_dir(output_dir).glob("step_*") if not p.name.endswith(".partial"))


def find_checkpoint(output_dir: Path, resume: str) -> Path:
    if resume != "latest":
        path = Path(resume)
        if not path.is_dir():
            raise TrainingError(f"--resume {resume}: no such checkpoint folder.")
        return path
    candidates = saved_checkpoints(output_dir)
    if not candidates:
        raise TrainingError(f"--resume latest: no checkpoint in {checkpoint_dir(output_dir)}.")
    return candidates[-1]


def save_checkpoint(accelerator: Accelerator, state: TrainState, output_dir: Path, limit: int, plan: dict) -> None:
    """Save only finite weights, under a temporary name renamed when complete: a run killed or diverging at
    any moment leaves the newest checkpoint a good one. `plan`: what fixes which images each step trains on,
    checked on resume (see load_checkpoint)."""
    progress = state.progress
    # the weights are the same on every process (DDP), so every process stops here alike
    if not all(torch.isfinite(p).all() for p in state.model.parameters()):
        raise TrainingError(
            f"Model weights became non-finite by optimizer step {progress.optimizer_steps} (epoch "
            f"{progress.epoch + 1}); the checkpoint was not saved. Lower --lr or set --clip-grad and "
            f"--resume latest from the last good checkpoint in {checkpoint_dir(output_dir)}.")
    folder = checkpoint_dir(output_dir) / f"step_{progress.optimizer_steps:08d}"
    partial = folder.with_name(folder.name + ".partial")
    with together(accelerator):
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
    # every process writes its own pieces (its RNG state), and the folder is renamed only once all have: without
    # the meeting at the end of this block the main process renamed it while another was still writing into it
    with together(accelerator):
        accelerator.save_state(str(partial))
    with together(accelerator):
        if accelerator.is_main_process:
            record = {"num_processes": accelerator.num_processes, "plan": plan, "progress": progress.state_dict(),
                      "scheduler": state.scheduler.state_dict()}
            (partial / STATE_FILE).write_text(json.dumps(record, indent=1))
            if state.ema is not None:
                save_file({k: v.contiguous() for k, v in state.ema.module.state_dict().items()}, partial / EMA_FILE)
            shutil.rmtree(folder, ignore_errors=True)
            partial.rename(folder)
            for old in sorted(checkpoint_dir(output_dir).glob("step_[0-9]*[0-9]"))[:-limit]:
                shutil.rmtree(old, ignore_errors=True)


PLAN_OPTIONS = {"seed": "--seed", "max_train_samples": "--max-train-samples", "train_images": "training images",
                "batch_size": "--batch-size", "gradient_accumulation_steps": "--gradient-accumulation-steps"}


def plan_differences(saved: dict, now: dict) -> list[str]:
    """What differs between the plan a checkpoint was saved under and this run's: each changes which images
    the remaining steps train on (the data order, the subset, the split, the batches), so the run would skip
    or repeat some of them. Checkpoints from before the plan was recorded have none to compare."""
    return [f"{PLAN_OPTIONS.get(key, key)} {saved[key]} (now {now.get(key)})" for key in saved
            if saved[key] != now.get(key)]


def load_checkpoint(accelerator: Accelerator, state: TrainState, folder: Path, lr: float, plan: dict) -> None:
    """Restore `state` (and every process's RNG) from `folder`; the lr given now replaces the checkpoint's. A
    checkpoint saved under another plan (see plan_differences) is refused."""
    with together(accelerator):
        record = _read_record(folder)
        differences = plan_differences(record.get("plan", {}), plan)
        if differences:
            raise TrainingError(f"{folder} was saved by a run with {', '.join(differences)}; resuming would skip or "
                                f"repeat training images. Resume with the same options, or start afresh in another "
                                f"--output-dir.")
        same_processes = record["num_processes"] == accelerator.num_processes
        if not same_processes and record["progress"]["batches_done"]:
            raise TrainingError(
                f"{folder} was saved mid-epoch by {record['num_processes']} process(es); resume it on as many "
                f"(each epoch's batches are shared out among the processes), or from a checkpoint saved at the "
                f"end of an epoch (--checkpoint-every epoch).")
        needed = [f"{SAFE_MODEL_NAME}.safetensors", f"{OPTIMIZER_NAME}.bin"] + ([EMA_FILE] if state.ema else [])
        if same_processes:  # otherwise some processes start from their seed, not a saved RNG state
            needed.append(f"{RNG_STATE_NAME}_{accelerator.process_index}.pkl")
        missing = [name for name in needed if not (folder / name).is_file()]
        if missing:
            raise TrainingError(f"{folder} is not a complete checkpoint: {', '.join(missing)} missing.")
    accelerator.load_state(str(folder))
    if state.ema is not None:
        state.ema.module.load_state_dict(load_file(folder / EMA_FILE, device=str(accelerator.device)))
    state.progress.load_state_dict(record["progress"])
    scheduler = state.scheduler
    scheduler.load_state_dict(record["scheduler"])
    # the lr given now wins over the checkpoint's (e.g. a lower one after a divergence); same lr: no change
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
    for group, base_lr, factor in zip(state.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base_lr * factor(scheduler.last_epoch)
    if not same_processes:
        accelerator.print(f"{folder} was saved by {record['num_processes']} process(es): the data order continues, "
                          f"but the random draws are not those of an uninterrupted run.")


def _read_record(folder: Path) -> dict:
    path = folder / STATE_FILE
    if not path.is_file():
        raise TrainingError(f"{folder} is not a complete checkpoint: {STATE_FILE} (progress and lr schedule) is "
                            f"missing; checkpoints from before this file was introduced cannot be resumed.")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise TrainingError(f"{path} is damaged ({e}).") from e
    missing = [key for key in ("num_processes", "progress", "scheduler") if key not in record]
    if missing:
        raise TrainingError(f"{path} is damaged: {', '.join(missing)} missing.")
    return record
