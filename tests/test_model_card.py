"""What a model folder's card and config say about the model's data and weights: the dataset by its name (a local
copy said so, never its path), no description of weights it did not start from, and a model that learnt nothing
called so."""
from __future__ import annotations

import json
from pathlib import Path

import pytest


def test_the_card_names_the_dataset_and_says_its_split_was_a_local_copy(trained):
    card = (trained / "README.md").read_text()
    folder = json.loads((trained / "training_args.json").read_text())["dataset"]
    assert folder not in card.split("## Training")[0]  # no local path before the training command
    assert f"name: {Path(folder).name}" in card and f"type: {Path(folder).name}" in card
    assert (f"The test split is a local copy: read from the folder `{Path(folder).name}`, not from the Hub, its "
            f"images stored as PNG files.") in card


def test_a_model_trained_from_scratch_does_not_carry_the_imagenet_weights_description(trained):
    pretrained_cfg = json.loads((trained / "config.json").read_text())["pretrained_cfg"]
    for key in ("paper_ids", "origin_url", "license", "hf_hub_id", "notes"):
        assert key not in pretrained_cfg, key
    assert pretrained_cfg["tag"] and pretrained_cfg["input_size"] == [3, 32, 32]  # what describes this model stays


def test_dataset_labels_are_ids_or_folder_names(tmp_path):
    from classifier.export import dataset_label

    assert dataset_label("cifar10") == "uoft-cs/cifar10"
    assert dataset_label("someone/some-dataset") == "someone/some-dataset"
    (tmp_path / "cifar10").mkdir()
    assert dataset_label(str(tmp_path / "cifar10") + "/") == "cifar10"


@pytest.mark.slow
def test_a_model_that_learnt_nothing_usable_is_called_so_in_the_log_and_on_its_card(tmp_path, caplog):
    """The test split's labels are the training labels moved one class on (red images labelled green...): the model
    learns the training split and is wrong on nearly every test image, below the commonest class's 25 %."""
    from .helpers import FAST, make_examples, train, write_parquet_repo

    moved = [(image, (label + 1) % 4) for image, label in make_examples(15, seed=1)]
    dataset = write_parquet_repo(tmp_path / "data", {"train": make_examples(60, seed=0), "test": moved})
    out = tmp_path / "model"
    train("--dataset", dataset, "--output-dir", out, "--epochs", "3", "--samples-per-class", "0",
          "--failure-samples", "0", *FAST)
    accuracy = json.loads((out / "metrics.json").read_text())["final"]["accuracy"]
    assert accuracy < 0.25
    said = (f"This model is no better than guessing: its test accuracy, {100 * accuracy:.2f} %, does not beat always "
            "answering the commonest class (25.00 %).")
    assert said in caplog.text
    assert f"**{said}" in " ".join((out / "README.md").read_text().split())
    # and the app serving it says so on About, and in /model_info's data
    from classifier import views
    from classifier.monitor import RequestMonitor
    from classifier.predict import load_predictors
    from classifier.service import App

    app = App(load_predictors(str(out), precision="fp32")[0], RequestMonitor())
    assert app.model_info()["warning"].startswith(said)
    assert f"⚠️ **{said}" in " ".join(views.about(app).split())


def test_a_temperature_fitted_to_answers_that_carry_nothing_is_called_so():
    """Logits drawn apart from the labels: the likelihood improves as T grows, up to the bound the fit keeps, and
    the card's calibration section says what that bound means."""
    import torch

    from classifier.calibration import calibrate
    from classifier.report import calibration_section

    torch.manual_seed(0)
    logits, labels = 3 * torch.randn(1, 400, 4), torch.randint(0, 4, (400,))
    calibration = calibrate(logits, labels, logits, labels)
    assert calibration["temperature"] == 20.0
    assert ("the fit stopped at its upper bound 20: on validation the model's answers are barely better than "
            "uniform") in " ".join(calibration_section(calibration, "test").split())


def test_a_model_that_learnt_is_not_called_a_guess(trained):
    assert "no better than guessing" not in (trained / "README.md").read_text()


def test_the_card_says_how_it_was_trained(trained):
    card = " ".join((trained / "README.md").read_text().split())
    assert "Trained on 1 process, mixed precision no, cpu: " in card  # (one process has no accelerate type)
