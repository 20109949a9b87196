"""Two real CPU processes (torchrun, gloo): training completes and writes its folder once, and evaluation counts
every sample exactly once and gives the same metrics as one process.

`accelerate launch --num_processes 2 --cpu` would start ONE process (accelerate's simple launcher), so these
tests start torchrun with ACCELERATE_USE_CPU=1 and check from the run's own record that two processes ran."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def torchrun(num_processes: int, *command, timeout: float = 300) -> subprocess.CompletedProcess:
    """`command` (a script and its arguments) on `num_processes` CPU processes of one machine; 1: plain python."""
    launcher = [sys.executable]
    if num_processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(num_processes)]
    # one thread per process: the processes share the machine's cores
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", PYTHONPATH=str(ROOT))
    return subprocess.run([*launcher, *map(str, command)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def succeeded(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_two_processes_train_and_count_each_sample_once(parquet_repo, tmp_path):
    eval_batch_size = 16
    out = tmp_path / "model"
    # 60 test images are not a multiple of 2 processes x 16: the last batch is padded and must be dropped
    result = succeeded(torchrun(
        2, "train_accelerate.py", "--dataset", parquet_repo, "--output-dir", out, "--epochs", "1", "--img-size", "32",
        "--batch-size", "16", "--eval-batch-size", eval_batch_size, "--no-pretrained", "--mixed-precision", "no"))
    record = json.loads((out / "training_args.json").read_text())
    assert (record["num_processes"], record["distributed_type"]) == (2, "MULTI_CPU")
    assert result.stdout.count("Model folder:") == 1  # written by one process only
    assert {"config.json", "model.safetensors", "metrics.json", "README.md"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["num_samples"] == 60
    assert sum(metrics["final"]["per_class"]["support"]) == 60

    one, two = tmp_path / "one.json", tmp_path / "two.json"
    script = Path("tests") / "distributed_eval.py"
    succeeded(torchrun(1, script, out, parquet_repo, one, eval_batch_size))
    succeeded(torchrun(2, script, out, parquet_repo, two, eval_batch_size))
    single, double = json.loads(one.read_text()), json.loads(two.read_text())
    assert (single["num_processes"], double["num_processes"]) == (1, 2)
    assert single["num_samples"] == double["num_samples"] == 60
    for key in ("accuracy", "precision", "recall", "f1", "mcc", "confusion_matrix", "per_class"):
        assert single[key] == double[key], key
    assert single["roc_auc"] == pytest.approx(double["roc_auc"], abs=1e-6)
    assert single["loss"] == pytest.approx(double["loss"], rel=1e-5)
