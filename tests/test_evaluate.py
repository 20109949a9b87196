"""`python -m classifier.evaluate`: a model on any labelled dataset, scored as its training run scored it, with the
dataset's classes matched to the model's by name."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import CLASSES, shape_image

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # the served model's own training run (the `trained` fixture)


def test_the_runs_own_test_split_gives_the_runs_own_figures(trained, parquet_repo):
    from classifier.evaluate import evaluate

    recorded = json.loads((trained / "metrics.json").read_text())["final"]
    measured = evaluate(str(trained), str(parquet_repo), batch_size=64)
    assert measured["num_samples"] == recorded["num_samples"] == 60
    assert measured["confusion_matrix"] == recorded["confusion_matrix"]
    for key in ("accuracy", "single_view_accuracy", "precision", "recall", "f1", "mcc", "roc_auc", "loss"):
        assert measured[key] == pytest.approx(recorded[key], abs=1e-4), key


def test_a_dataset_of_some_of_the_classes_in_another_order_is_matched_by_name(trained, tmp_path):
    """A folder of blue and red images only: imagefolder numbers them blue 0, red 1, where the model's numbers are
    red 0, blue 2. Matched by number, nearly every answer would count as wrong."""
    from classifier.evaluate import evaluate

    rng = random.Random(5)
    for label in ("red", "blue"):
        (tmp_path / "photos" / "test" / label).mkdir(parents=True)
        for i in range(8):
            shape_image(label, rng, 32).save(tmp_path / "photos" / "test" / label / f"{i}.png")
        (tmp_path / "photos" / "train" / label).mkdir(parents=True)
        shape_image(label, rng, 32).save(tmp_path / "photos" / "train" / label / "0.png")
    measured = evaluate(str(trained), str(tmp_path / "photos"))
    support = dict(zip(CLASSES, measured["per_class"]["support"]))
    assert support == {"red": 8, "green": 0, "blue": 8, "yellow": 0}
    assert measured["accuracy"] > 0.5
    # macro averages over the two classes the data has, not four with two zeros
    per_class, present = measured["per_class"], [CLASSES.index("red"), CLASSES.index("blue")]
    assert measured["macro_over"] == ["red", "blue"]
    for key in ("precision", "recall", "f1"):
        assert measured[key] == pytest.approx(sum(per_class[key][i] for i in present) / 2), key


def test_the_command_prints_writes_and_refuses_classes_the_model_lacks(trained, parquet_repo, tmp_path):
    out = tmp_path / "eval"
    result = subprocess.run([sys.executable, "-m", "classifier.evaluate", str(trained), "--dataset",
                             str(parquet_repo), "--output-dir", str(out), "--max-samples", "20"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads((out / "metrics.json").read_text())
    assert written["num_samples"] == 20 and written["split"] == "test" and written["model"] == str(trained)
    assert result.stdout.startswith(f"test, 20 images: Accuracy {written['accuracy']:.4f}, ")
    assert (out / "confusion_matrix.png").stat().st_size > 0

    for label in ("red", "purple"):  # a class the model does not have
        (tmp_path / "odd" / "train" / label).mkdir(parents=True)
        shape_image("red", random.Random(1), 32).save(tmp_path / "odd" / "train" / label / "0.png")
    refused = subprocess.run([sys.executable, "-m", "classifier.evaluate", str(trained), "--dataset",
                              str(tmp_path / "odd"), "--split", "train"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == ("error: The dataset's classes purple are not the model's (its classes: red, "
                                      "green, blue, yellow); its classes are matched to the model's by name.")
