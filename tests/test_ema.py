"""--model-ema: timm's moving average of the weights is what the run validates and exports, and a resumed run
continues it exactly."""
import json

import pytest
import torch
from safetensors.torch import load_file

from .helpers import FAST, train

pytestmark = pytest.mark.slow


def test_the_average_is_exported_and_resumes_bit_exactly(parquet_repo, tmp_path, capsys):
    args = ["--dataset", parquet_repo, "--epochs", "3", "--model-ema", "--checkpoint-every", "1",
            "--checkpoint-limit", "100", "--samples-per-class", "0", "--failure-samples", "0",
            "--weights-dtype", "float32", "--mixed-precision", "no", *FAST]
    uninterrupted = tmp_path / "uninterrupted"
    train(*args, "--output-dir", uninterrupted)
    assert "Model EMA: a moving average of the weights" in capsys.readouterr().out
    checkpoints = sorted((uninterrupted / "checkpoints").glob("step_*"))
    last = checkpoints[-1]
    exported, average, weights = (load_file(uninterrupted / "model.safetensors"),
                                  load_file(last / "model_ema.safetensors"), load_file(last / "model.safetensors"))
    assert all(torch.equal(exported[k], average[k]) for k in exported), "the export is not the average"
    assert not all(torch.equal(exported[k], weights[k]) for k in exported), "the average equals the weights"

    middle = checkpoints[len(checkpoints) // 2 + 1]  # mid-epoch: the decay's warm-up and the average continue
    resumed = tmp_path / "resumed"
    train(*args, "--output-dir", resumed, "--resume", middle)
    again = load_file(resumed / "model.safetensors")
    for key in exported:
        assert torch.equal(exported[key], again[key]), key
    history = [json.loads((folder / "metrics.json").read_text())["history"] for folder in (uninterrupted, resumed)]
    assert [h["val_accuracy"] for h in history[0]] == [h["val_accuracy"] for h in history[1]]


def test_a_checkpoint_without_the_average_is_refused_under_model_ema(parquet_repo, tmp_path, capsys):
    args = ["--dataset", parquet_repo, "--epochs", "2", "--checkpoint-every", "epoch", "--samples-per-class", "0",
            "--failure-samples", "0", *FAST]
    train(*args, "--epochs", "1", "--output-dir", tmp_path / "run")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        train(*args, "--output-dir", tmp_path / "run", "--resume", "latest", "--model-ema")
    assert capsys.readouterr().err.endswith(
        f"{tmp_path / 'run' / 'checkpoints' / 'step_00000006'} is not a complete checkpoint: model_ema.safetensors "
        f"missing.\n")
