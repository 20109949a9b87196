"""Evaluation during training: each epoch's quick metrics agree with the full report, which runs once, at the end."""
import pytest
import torch

from classifier import metrics as metrics_lib
from classifier.engine import quick_metrics, split_metrics
from .helpers import FAST, train


@pytest.mark.parametrize("views", [1, 2])
def test_quick_metrics_agree_with_the_full_report(views):
    generator = torch.Generator().manual_seed(0)
    num_classes = 5
    refs = torch.randint(0, num_classes - 1, (300,), generator=generator)  # class 4 never appears
    logits = torch.randn(views, 300, num_classes, generator=generator) + 2 * torch.nn.functional.one_hot(refs, 5)
    logits[..., 3] -= 10  # class 3 is never predicted
    quick = quick_metrics(logits, refs, num_classes)
    full, _ = split_metrics(logits, refs, num_classes, "flip" if views == 2 else "none")
    for key in ("accuracy", "f1", "loss", "num_samples"):
        assert quick[key] == pytest.approx(full[key], abs=1e-9), key


@pytest.mark.slow
def test_the_full_report_runs_once_however_many_epochs(parquet_repo, tmp_path, monkeypatch):
    calls = []
    full_report = metrics_lib.compute

    def counted(*args, **kwargs):
        calls.append(args[2])
        return full_report(*args, **kwargs)

    monkeypatch.setattr(metrics_lib, "compute", counted)
    out = tmp_path / "model"
    train("--dataset", parquet_repo, "--output-dir", out, "--epochs", "3", "--samples-per-class", "0",
          "--failure-samples", "0", "--weights-dtype", "float16", *FAST)
    assert len(calls) == 1, f"the full report ran {len(calls)} times in 3 epochs and the final evaluation"
