"""The training command's first ten minutes, as a new user meets them: the Hub out of reach, library warnings,
progress through every phase, the command that serves the result."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import free_port, train

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train_accelerate.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1", **env))


@pytest.mark.slow
def test_a_preset_with_the_hub_out_of_reach_fails_at_once_in_one_line(tmp_path):
    # nothing listens on this port: what a machine without internet meets, without the 23 s of retries
    offline = dict(HF_HUB_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    result = cli("--dataset", "cifar10", "--output-dir", tmp_path / "out", **offline)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    # the shared copy is named only where it exists from the project's folder
    folder = "../shared/data/cifar10" if (ROOT / "../shared/data/cifar10").is_dir() else "<a folder>"
    assert errors == ["error: cannot reach the Hub (ConnectError) to load 'cifar10'; use a local folder: "
                      f"--dataset {folder} (a copy laid out like uoft-cs/cifar10)."]
    assert "Traceback" not in result.stderr and "Retrying" not in result.stderr
    assert "Expected one of presets" not in result.stderr


def test_a_dataset_path_that_does_not_exist_is_named_as_a_missing_folder(tmp_path, monkeypatch, capsys):
    """Not taken for a Hub id (which would answer "cannot reach the Hub" offline and name the path back)."""
    monkeypatch.chdir(ROOT)  # the relative paths are read from the project's folder, as `cli` runs the script
    for missing in (tmp_path / "nowhere", "../nowhere/cifar10", "tests/nowhere"):
        with pytest.raises(SystemExit) as exited:
            train("--dataset", missing, "--output-dir", tmp_path / "out")
        shown = capsys.readouterr()
        assert exited.value.code == 2 and "Traceback" not in shown.err
        assert f"error: {missing}: no such folder" in shown.err and "Hub (" not in shown.err
        # the first thing said: no weights fetched (resnet18's, from the Hub) and no recipe chosen before it
        assert "Pretrained weights" not in shown.err and shown.out == "", shown


def test_a_model_name_timm_does_not_know_is_refused_with_the_closest_ones(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        train("--dataset", tmp_path, "--output-dir", tmp_path / "out", "--model", "resnet-18")
    shown = capsys.readouterr()
    assert exited.value.code == 2 and "Traceback" not in shown.err and shown.out == ""
    assert "error: --model 'resnet-18' is not a timm model; did you mean resnet18, " in shown.err


@pytest.mark.slow
def test_library_warnings_are_printed_once():
    """huggingface_hub prints through a handler of its own; training's logging set-up must not add a second, and drops
    the one warning that only puzzles (a local folder's README without a dataset card's metadata)."""
    code = ("import logging\nfrom classifier.logs import configure_logging\nconfigure_logging()\n"
            "logging.getLogger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].')\n"
            "logging.getLogger('classifier.model').warning('ours')\n"
            # what datasets does with a local folder's README.md that has no metadata block
            "from huggingface_hub import RepoCard\nRepoCard('# A folder of images')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stderr.count("Retrying in 1s") == 1, result.stderr
    assert result.stderr.count("ours") == 1
    assert "Repo card metadata block was not found" not in result.stderr  # noise to someone training


@pytest.mark.slow
def test_a_quick_run_shows_each_phase_and_ends_with_the_command_that_serves_it(parquet_repo, tmp_path):
    out = tmp_path / "quick"
    # every tqdm update printed, so the bar's steps can be read (by default it redraws at most 10 times a second)
    result = cli("--dataset", parquet_repo, "--output-dir", out, "--epochs", "2", "--img-size", "32",
                 "--batch-size", "4", "--max-train-samples", "20", "--no-pretrained", "--no-data-cache",
                 "--samples-per-class", "0", "--failure-samples", "0", TQDM_MININTERVAL="0")
    assert result.returncode == 0, result.stderr[-3000:]
    shown = result.stdout + result.stderr.replace("\r", "\n")
    assert shown.index("Loading") < shown.index("decode train")  # something is said before the first wait
    for phase in ("decode train", "decode validation", "decode test", "epoch 1/2", "validate",
                  "validation (tta flip)", "test (tta flip)"):
        assert re.search(rf"^{re.escape(phase)}: +\d+%", shown, re.M), phase
    # the bar moves with each of the 5 batches, not only when the loss is read at the end of the epoch
    assert re.search(r"^epoch 1/2: +40%.* 2/5 ", shown, re.M)
    # 24 validation images for 20 training ones: the run says how to validate on fewer
    assert "validates on all 24 validation images; a quick run with --max-eval-samples 20" in shown
    assert re.search(r"epoch 1/2: train loss .* \| \d+s, about \d+ (s|min) to go$", shown, re.M)
    assert result.stdout.rstrip().endswith(f"Serve it: python app.py --model {out} --host 127.0.0.1")
