"""Two CPU processes (gloo) through `accelerate launch`: training completes, and evaluation counts every
sample exactly once and gives the same metrics as one process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def launch(num_processes: int, *command: str) -> None:
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if num_processes > 1:
        launcher += ["--cpu"]
    result = subprocess.run([*launcher, *command], cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def test_two_processes_train_and_count_each_sample_once(parquet_repo, tmp_path):
    eval_batch_size = 16
    out = tmp_path / "model"
    # 60 test images are not a multiple of 2 processes x 16: the last batch is padded and must be dropped
    launch(2, "train_accelerate.py", "--dataset", str(parquet_repo), "--output-dir", str(out), "--epochs", "1",
           "--img-size", "32", "--batch-size", "16", "--eval-batch-size", str(eval_batch_size), "--no-pretrained",
           "--mixed-precision", "no")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["num_samples"] == 60
    assert sum(metrics["final"]["per_class"]["support"]) == 60

    one, two = tmp_path / "one.json", tmp_path / "two.json"
    script = str(Path("tests") / "distributed_eval.py")
    launch(1, script, str(out), str(parquet_repo), str(one), str(eval_batch_size))
    launch(2, script, str(out), str(parquet_repo), str(two), str(eval_batch_size))
    single, double = json.loads(one.read_text()), json.loads(two.read_text())
    assert single["num_samples"] == double["num_samples"] == 60
    for key in ("accuracy", "precision", "recall", "f1", "mcc", "confusion_matrix", "per_class"):
        assert single[key] == double[key], key
    assert single["roc_auc"] == pytest.approx(double["roc_auc"], abs=1e-6)
    assert single["loss"] == pytest.approx(double["loss"], rel=1e-5)
