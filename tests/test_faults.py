"""Training under faults: kill -9, divergence, unwritable or full disks, bad datasets, secrets."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

from classifier.data import DataError, load_splits

from .helpers import CLASSES, FAST, make_examples, reset_accelerate_state, train

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train_accelerate.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, **kwargs))


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_latest_is_bit_identical(checkpointed_run, tmp_path, capsys):
    args, uninterrupted = checkpointed_run
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "train_accelerate.py", *map(str, args), "--output-dir", str(out)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    # 6 steps per epoch: step 8 is in the middle of epoch 2
    while not (out / "checkpoints" / "step_00000008").exists():
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not (out / "config.json").exists()
    kept = sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.endswith(".partial"))
    assert kept[-1] == "step_00000008", kept  # (step 2 too when the kill came before the oldest was removed)
    progress = json.loads((out / "checkpoints" / "step_00000008" / "training_state.json").read_text())["progress"]
    assert (progress["epoch"], progress["batches_done"], progress["optimizer_steps"]) == (1, 2, 8)

    capsys.readouterr()
    train(*args, "--output-dir", out, "--resume", "latest")
    # from step 8, mid-epoch 2: a kill that came late, or a resume from an older checkpoint, would prove less
    assert f"Resumed from {out / 'checkpoints' / 'step_00000008'} (epoch 2, batch 2)." in capsys.readouterr().out
    expected, resumed = load_file(uninterrupted / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3]


@pytest.mark.slow
def test_ctrl_c_says_how_to_resume_without_a_traceback(checkpointed_run, tmp_path):
    args, _ = checkpointed_run
    out = tmp_path / "interrupted"
    process = subprocess.Popen([sys.executable, "train_accelerate.py", *map(str, args), "--output-dir", str(out)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "checkpoints" / "step_00000002").exists():
        assert process.poll() is None and time.time() < deadline, "the run ended before it could be interrupted"
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert stderr.rstrip().splitlines()[-1] == (f"Interrupted. --resume latest continues from the newest checkpoint "
                                                f"in {out / 'checkpoints'}.")


@pytest.mark.slow
def test_divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint(parquet_repo, tmp_path):
    out = tmp_path / "model"
    args = ["--dataset", parquet_repo, "--output-dir", out, "--checkpoint-every", "2", *FAST]
    train(*args, "--epochs", "1")
    good = sorted((out / "checkpoints").glob("step_*"))[-1]
    (out / "config.json").unlink()

    failed = run_cli(*args, "--epochs", "2", "--resume", "latest", "--lr", "nan")
    assert failed.returncode == 2, failed.stderr[-2000:]
    # resumed at step 6 (the end of epoch 1): the nan lr's first step leaves the weights nan, so the second batch
    # of epoch 2 (index 1, as the message counts batches from 0) is the first whose loss is nan; the message names
    # it and where the last good state is
    assert (f"error: Loss became nan at epoch 2, batch 1. Lower --lr or enable --clip-grad; checkpoints in "
            f"{out / 'checkpoints'} (if any) hold the last good state.\n") in failed.stderr, failed.stderr[-2000:]
    assert "Traceback" not in failed.stderr
    assert sorted((out / "checkpoints").glob("step_*"))[-1] == good  # nothing non-finite was saved
    assert not (out / "config.json").exists()

    train(*args, "--epochs", "2", "--resume", "latest")
    weights = load_file(out / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_weights_that_diverged_after_the_last_checked_loss_are_named_at_evaluation():
    # the last optimizer step can break the weights with every loss seen finite; the metrics would only say
    # "Input contains NaN" (sklearn's words, as a CI run showed)
    import timm
    from accelerate import Accelerator

    from classifier.engine import collect_view_logits
    from classifier.state import TrainingError

    model = timm.create_model("resnet18", num_classes=4).eval()
    with torch.no_grad():
        model.fc.bias[2] = float("nan")
    loader = [(torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8), torch.arange(5) % 4)]
    mean, std = torch.tensor([0.5] * 3), torch.tensor([0.25] * 3)
    with pytest.raises(TrainingError, match=r"validate: the model's outputs are not finite \(NaN or inf\) for 5 "
                                            r"of 5 images.*Lower --lr"):
        reset_accelerate_state()
        collect_view_logits(model, loader, Accelerator(cpu=True), mean, std, "none", desc="validate")


@pytest.mark.slow
def test_a_checkpoint_missing_a_piece_names_it_on_resume(parquet_repo, tmp_path, capsys):
    out = tmp_path / "model"
    args = ["--dataset", parquet_repo, "--output-dir", out, "--epochs", "1", "--checkpoint-every", "3",
            "--samples-per-class", "0", *FAST]
    train(*args)
    latest = sorted((out / "checkpoints").glob("step_*"))[-1]
    # every piece is saved by name; none is pickled by position (accelerate's custom_checkpoint_N.pkl)
    assert {p.name for p in latest.iterdir()} >= {"model.safetensors", "optimizer.bin", "random_states_0.pkl",
                                                   "training_state.json"}
    assert not list(latest.glob("custom_checkpoint_*"))
    # a record without the scheduler's state is named too, not a KeyError
    saved = (latest / "training_state.json").read_text()
    record = json.loads(saved)
    (latest / "training_state.json").write_text(json.dumps({k: v for k, v in record.items() if k != "scheduler"}))
    with pytest.raises(SystemExit) as exited:
        train(*args, "--resume", "latest")
    assert exited.value.code == 2 and "training_state.json is damaged: scheduler missing" in capsys.readouterr().err
    (latest / "training_state.json").write_text(saved)
    for piece, message in (("optimizer.bin", "optimizer.bin missing"),
                           ("training_state.json", "training_state.json (progress and lr schedule) is missing")):
        (latest / piece).unlink()
        with pytest.raises(SystemExit) as exited:
            train(*args, "--resume", "latest")
        assert exited.value.code == 2
        assert f"is not a complete checkpoint: {message}" in capsys.readouterr().err


def test_unwritable_output_dir_fails_before_training(parquet_repo, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exited:
        train("--dataset", parquet_repo, "--output-dir", blocker / "model", "--epochs", "1", *FAST)
    output = capsys.readouterr()
    assert exited.value.code == 2
    assert "Cannot write to --output-dir" in output.err
    assert "epoch 1/1" not in output.out + output.err


def test_full_disk_is_reported_before_training(parquet_repo, tmp_path, monkeypatch, capsys):
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10 * 2**20))
    with pytest.raises(SystemExit) as exited:
        train("--dataset", parquet_repo, "--output-dir", tmp_path / "model", "--epochs", "1", *FAST)
    assert exited.value.code == 2
    err = capsys.readouterr()
    assert "MB free" in err.err and "epoch 1/1" not in err.out


@pytest.mark.slow
def test_a_failed_write_never_leaves_a_folder_that_looks_complete(parquet_repo, tmp_path, monkeypatch):
    from classifier import report

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "model_card", disk_full)
    out = tmp_path / "model"
    with pytest.raises(SystemExit):
        train("--dataset", parquet_repo, "--output-dir", out, "--epochs", "1", *FAST)
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()


@pytest.mark.slow  # a training process and the Hub stand-in
def test_the_token_never_reaches_the_outputs(parquet_repo, tmp_path):
    """A run that reads the token: --push-to-hub checks write access with it before training and pushes with it
    after (the stand-in takes this token only). It reaches no file of the folder, the logs, the cache, the pushed
    repo, nor the run's output."""
    from .hub_standin import HubStandIn
    from .test_hub import hub_env, python

    hub = HubStandIn(token="hf_NeverWriteMe0123456789").start()
    try:
        out, home = tmp_path / "model", tmp_path / "home"
        result = python(hub_env(hub, home), "train_accelerate.py", "--dataset", parquet_repo, "--output-dir", out,
                        "--epochs", "1", "--report-to", "tensorboard", "--push-to-hub", "tester/secret", *FAST)
        assert result.returncode == 0, result.stderr[-3000:]
        pushed = hub.repos[("model", "tester/secret")]
    finally:
        hub.stop()
    assert {"config.json", "model.safetensors", "README.md", "metrics.json"} <= set(pushed.files)  # it was read
    token = hub.token.encode()
    assert token not in (result.stdout + result.stderr).encode()
    assert list((out / "logs").rglob("events.out.tfevents.*"))
    for path in [*out.rglob("*"), *home.rglob("*")]:
        if path.is_file():
            assert token not in path.read_bytes(), path
    for name, data in [*pushed.files.items(), *hub.lfs_objects.items()]:
        assert token not in data, name


def parquet(folder: Path, columns: dict, features: datasets.Features, split="train") -> Path:
    ds = datasets.Dataset.from_dict(columns, features=features)
    ds.to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    return folder


def test_bad_datasets_are_refused_before_training(tmp_path):
    images = [im for im, _ in make_examples(3, 0)]
    labels = datasets.ClassLabel(names=CLASSES)
    no_image = parquet(tmp_path / "no_image", {"text": ["a"] * 12, "label": [0, 1, 2, 3] * 3},
                       datasets.Features({"text": datasets.Value("string"), "label": labels}))
    with pytest.raises(DataError, match="No image column"):
        load_splits(str(no_image))

    too_small = parquet(tmp_path / "small", {"image": images[:3], "label": [0, 1, 2]},
                        datasets.Features({"image": datasets.Image(), "label": labels}))
    with pytest.raises(DataError, match="Cannot carve a stratified"):
        load_splits(str(too_small))

    empty = tmp_path / "empty"
    parquet(empty, {"image": [], "label": []}, datasets.Features({"image": datasets.Image(), "label": labels}))
    with pytest.raises(DataError, match="empty"):
        load_splits(str(empty))


def test_labels_out_of_range_name_the_row(tmp_path, capsys):
    examples = make_examples(6, 0)
    labels = [lb for _, lb in examples]
    labels[5] = -1  # datasets' marker for a missing class label
    folder = parquet(tmp_path / "bad_labels", {"image": [im for im, _ in examples], "label": labels},
                     datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}))
    with pytest.raises(SystemExit) as exited:
        train("--dataset", folder, "--output-dir", tmp_path / "out", "--epochs", "1", "--val-fraction", "0.25", *FAST)
    stderr = capsys.readouterr().err
    assert exited.value.code == 2
    assert "label(s) outside 0..3" in stderr and "row 5 has label -1" in stderr
