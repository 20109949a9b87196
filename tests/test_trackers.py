"""Experiment trackers (accelerate's): the run lands under the project and run names a user gives, or names taken
from the dataset, the model and the output folder."""
import json

import pytest

from classifier.options import parse_args
from .helpers import FAST, train


def test_tracker_names_default_to_the_dataset_the_model_and_the_output_folder():
    args = parse_args(["--dataset", "../shared/data/cifar10/", "--model", "resnet34", "--output-dir", "runs/try-2"])
    assert (args.project_name, args.run_name) == ("cifar10", "resnet34-try-2")
    args = parse_args(["--dataset", "uoft-cs/cifar10", "--project-name", "p", "--run-name", "r"])
    assert (args.project_name, args.run_name) == ("p", "r")


@pytest.mark.slow
def test_a_run_is_logged_under_the_given_project_and_run_names(parquet_repo, tmp_path):
    from trackio.sqlite_storage import SQLiteStorage  # local storage under the tests' HF_HOME

    out = tmp_path / "model"
    train("--dataset", parquet_repo, "--output-dir", out, "--epochs", "2", "--report-to", "tensorboard,trackio",
          "--project-name", "blob-study", "--run-name", "first-try", "--samples-per-class", "0",
          "--failure-samples", "0", *FAST)
    assert list((out / "logs" / "blob-study").glob("events.out.tfevents.*")), "tensorboard: no log under the project"
    assert "first-try" in SQLiteStorage.get_runs("blob-study")
    logged = SQLiteStorage.get_logs("blob-study", "first-try")
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [row["epoch/val_accuracy"] for row in logged if "epoch/val_accuracy" in row] == \
        [epoch["val_accuracy"] for epoch in history]  # every epoch, as the run recorded it
