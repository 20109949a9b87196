"""Calibrated probabilities and the low-confidence hint, on models trained here (heatmaps: test_explain.py)."""
from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from gradio_client import Client, handle_file

from classifier.calibration import (calibrate, calibration_metrics, fit_temperature, low_confidence_threshold, nll,
                                    probabilities)
from classifier.model import load_folder
from classifier.predict import Predictor

from .helpers import create_served_app, serve, shape_image


def test_a_fitted_temperature_undoes_a_known_overconfidence():
    """Logits of a calibrated model (labels drawn from its own softmax) multiplied by 3: the fit finds T near 3 on
    one set, and the record scores that T on another set, drawn apart (on its own fitting set a temperature
    lowers the NLL by construction)."""
    generator = torch.Generator().manual_seed(0)

    def draw(n):
        logits = torch.randn(2, n, 5, generator=generator) * 2  # two views, as with the mirror
        labels = torch.multinomial(probabilities(logits).float(), 1, generator=generator).squeeze(1)
        return logits * 3, labels

    fit, held_out = draw(4000), draw(3000)
    temperature = fit_temperature(*fit)
    assert temperature == pytest.approx(3, rel=0.1)
    record = calibrate(*fit, *held_out)
    assert record["temperature"] == temperature and record["num_samples"] == 3000
    # the figures are the held-out set's, before and at the temperature fitted on the other
    assert record["before"]["nll"] == pytest.approx(float(nll(probabilities(held_out[0]), held_out[1])), rel=1e-9)
    assert record["after"]["nll"] == pytest.approx(float(nll(probabilities(held_out[0], temperature), held_out[1])),
                                                   rel=1e-9)
    assert record["after"]["nll"] < record["before"]["nll"] and record["after"]["ece"] < record["before"]["ece"]


def right_answers_at_or_above(threshold: float, probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """(the share of the right answers whose top probability is at least `threshold`, how many are right)"""
    top, predicted = probs.max(-1)
    right = top[predicted == labels]
    return float((right >= threshold).double().mean()), len(right)


def test_the_low_confidence_threshold_has_95_percent_of_the_right_validation_answers_above_it():
    """The hint's rule (an image under the threshold is less sure than 95 % of the images the model gets right on
    validation), for every number of right answers from 1 to 80: at most 5 % of them under it, and no lower than it
    needs to be (once 5 % is a whole answer, the least sure right answer is under it)."""
    generator = torch.Generator().manual_seed(1)
    for n in range(1, 81):
        logits = torch.randn(1, n + 7, 4, generator=generator) * 3
        labels = logits[0].argmax(-1)
        labels[:7] = (labels[:7] + 1) % 4  # 7 wrong answers, whose probabilities must not count
        probs = probabilities(logits)
        threshold = low_confidence_threshold(probs, labels)
        share, right = right_answers_at_or_above(threshold, probs, labels)
        assert right == n and share >= 0.95, (n, share)
        if n >= 20:
            assert threshold > probs.max(-1).values[7:].min(), n
    # through calibrate: the threshold is fitted on validation, at its temperature, and the rate is the test's
    val_logits = torch.randn(1, 200, 4, generator=generator) * 3
    val_labels = torch.where(torch.rand(200, generator=generator) < 0.8, val_logits[0].argmax(-1), 0)
    test_logits = torch.randn(1, 300, 4, generator=generator)
    test_labels = test_logits[0].argmax(-1)
    record = calibrate(val_logits, val_labels, test_logits, test_labels)
    threshold, temperature = record["low_confidence_threshold"], record["temperature"]
    share, right = right_answers_at_or_above(threshold, probabilities(val_logits, temperature), val_labels)
    assert share >= 0.95 and share - 1 / right < 0.95
    assert record["low_confidence_rate"] == pytest.approx(
        float((probabilities(test_logits, temperature).max(-1).values < threshold).double().mean()))


def test_the_calibration_error_is_the_binned_gap_between_confidence_and_accuracy():
    # two sure answers (0.9), one of them wrong; two unsure ones (0.45), both right: half the images in each bin
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.45, 0.3, 0.25], [0.45, 0.3, 0.25]],
                         dtype=torch.float64)
    record = calibration_metrics(probs, torch.tensor([0, 1, 0, 0]))
    assert record["ece"] == pytest.approx(0.5 * abs(0.9 - 0.5) + 0.5 * abs(0.45 - 1.0))
    assert [c for c in record["bin_count"] if c] == [2, 2] and record["accuracy"] == 0.75


def test_a_degenerate_validation_split_keeps_the_temperature_in_range():
    """Every validation answer wrong: the likelihood improves without end as T grows; the fit stops at the range's
    end instead of returning an absurd number. Every answer right: T shrinks, within the range."""
    from classifier.calibration import TEMPERATURE_RANGE

    logits = torch.tensor([[[4.0, 0.0], [0.0, 4.0], [3.0, 1.0]]])
    assert fit_temperature(logits, torch.tensor([1, 0, 1])) == TEMPERATURE_RANGE[1]
    assert TEMPERATURE_RANGE[0] <= fit_temperature(logits, torch.tensor([0, 1, 0])) < 0.5


def test_with_the_mirror_average_the_temperature_can_move_the_class_and_the_record_says_so():
    """The image favours class 0 a little over 2, its mirror class 1 over 2: at T = 1 the mean of their softmaxes
    picks 2, at a low T each view is sure of its own class and the mean picks 0. Labels 0 drive T low."""
    views = torch.tensor([[2.2, 0.0, 1.9], [0.0, 2.0, 1.9]]).unsqueeze(1).repeat(1, 20, 1)  # (views, N, classes)
    labels = torch.zeros(20, dtype=torch.long)
    assert probabilities(views).argmax(-1).eq(2).all()
    record = calibrate(views, labels, views, labels)
    assert record["temperature"] < 0.5 and record["class_changes"] == 20
    assert (record["before"]["accuracy"], record["after"]["accuracy"]) == (0.0, 1.0)


def test_training_fits_a_temperature_that_lowers_test_nll(trained, parquet_repo):
    """The run in the test suite: the temperature comes from validation and lowers the NLL of the test split, which it
    never saw; the low-confidence threshold keeps 95 % of the right validation answers above it; config.json, the
    reliability diagram and the card carry them."""
    metrics = json.loads((trained / "metrics.json").read_text())
    calibration = metrics["final"]["calibration"]
    config = json.loads((trained / "config.json").read_text())
    assert calibration["fitted_on"] == "validation" and metrics["final_split"] == "test"
    assert abs(calibration["temperature"] - 1) > 0.02
    assert calibration["after"]["nll"] < calibration["before"]["nll"]
    assert config["temperature"] == pytest.approx(calibration["temperature"], rel=1e-5)
    # the threshold's rule on the run's own validation split, rebuilt: 95 % of the right answers at or above it (with
    # the record's values: config.json keeps 6 decimals, which can put the answer at the threshold just under it)
    from classifier.recalibrate import held_out_logits

    assert config["low_confidence_threshold"] == pytest.approx(calibration["low_confidence_threshold"], abs=5e-7)
    val_logits, val_labels, *_ = held_out_logits(trained, str(parquet_repo))
    share, right = right_answers_at_or_above(calibration["low_confidence_threshold"],
                                             probabilities(val_logits, calibration["temperature"]), val_labels)
    assert right >= 20 and share >= 0.95 and share - 1 / right < 0.95, (share, right)
    assert (trained / "calibration.png").stat().st_size > 10_000
    card = (trained / "README.md").read_text()
    assert "## Calibration" in card and f"/ {calibration['temperature']:.4g})" in card
    assert f"| {100 * calibration['after']['accuracy']:.2f} % |" in card


def without_calibration(folder, destination):
    shutil.copytree(folder, destination)
    config = json.loads((destination / "config.json").read_text())
    for key in ("temperature", "low_confidence_threshold"):
        config.pop(key, None)
    (destination / "config.json").write_text(json.dumps(config))
    return destination


def test_the_temperature_changes_the_probabilities_not_the_class(trained, tmp_path):
    plain = without_calibration(trained, tmp_path / "plain")
    images = [shape_image(c, random.Random(i), size=32) for i, c in enumerate(["red", "green", "blue", "yellow"])]
    calibrated, uncalibrated = (Predictor(load_folder(f), "m").probabilities(images) for f in (trained, plain))
    assert not torch.allclose(calibrated, uncalibrated, atol=1e-3)
    # one view's class cannot move (logits divided by T > 0 keep their order); the mean of the two flip views'
    # probabilities can, where the views disagree, so the class is compared on one view
    one_view = [Predictor(load_folder(f), "m") for f in (trained, plain)]
    for predictor in one_view:
        predictor.loaded.config["test_time_augmentation"] = "none"
    calibrated, uncalibrated = (predictor.probabilities(images) for predictor in one_view)
    assert not torch.allclose(calibrated, uncalibrated, atol=1e-3)
    assert torch.equal(calibrated.argmax(-1), uncalibrated.argmax(-1))
    assert load_folder(plain).temperature == 1.0 and load_folder(plain).low_confidence_threshold is None


@pytest.mark.slow
def test_a_folder_without_calibration_still_serves(trained, tmp_path):
    plain = without_calibration(trained, tmp_path / "old-model")
    image = tmp_path / "red.png"
    shape_image("red", random.Random(2), size=32).save(image)
    with serve(create_served_app(plain)) as url:
        label, summary, _ = Client(url, verbose=False).predict(handle_file(str(image)), 2, api_name="/predict")
    assert len(label["confidences"]) == 2 and "low confidence" not in summary


@pytest.mark.slow
def test_the_hint_appears_exactly_under_the_threshold(trained, tmp_path):
    """With the threshold set between two images' calibrated top probabilities, the less sure one gets the hint
    (summary and REST field), the surer one does not."""
    import httpx

    images = {name: shape_image(colour, random.Random(seed), size=32)
              for name, colour, seed in (("a", "red", 3), ("b", "green", 4), ("c", "blue", 5), ("d", "yellow", 6))}
    predictor = Predictor(load_folder(trained), "m")
    tops = {name: float(p.max()) for name, p in zip(images, predictor.probabilities(list(images.values())))}
    unsure, sure = min(tops, key=tops.get), max(tops, key=tops.get)
    assert tops[sure] > tops[unsure]
    folder = tmp_path / "hinted"
    shutil.copytree(trained, folder)
    config = json.loads((folder / "config.json").read_text())
    config["low_confidence_threshold"] = (tops[sure] + tops[unsure]) / 2
    (folder / "config.json").write_text(json.dumps(config))
    with serve(create_served_app(folder)) as url:
        client = Client(url, verbose=False)
        for name, expected in ((unsure, True), (sure, False)):
            path = tmp_path / f"{name}.png"
            images[name].save(path)
            _, summary, _ = client.predict(handle_file(str(path)), 1, api_name="/predict")
            assert ("may not be one of this model's classes" in summary) is expected, (name, summary)
            rest = httpx.post(f"{url}api/classify", files={"file": (path.name, path.read_bytes(), "image/png")}).json()
            assert rest["low_confidence"] is expected
            _, details = client.predict(handle_file(str(path)), None, api_name="/explain")
            assert details["low_confidence"] is expected


def test_recalibrating_a_folder_reproduces_the_runs_own_fit(trained, parquet_repo, tmp_path):
    """`python -m classifier.recalibrate` on a folder without calibration rebuilds the run's validation split and
    finds the temperature the run found (fp32 both times), writing the same keys, record, plot and card section."""
    from classifier.recalibrate import main

    plain = without_calibration(trained, tmp_path / "plain")
    (plain / "calibration.png").unlink()
    expected = json.loads((trained / "metrics.json").read_text())["final"]["calibration"]
    # the record names the dataset's folder only (.../parquet_repo0): its path is given
    assert main([str(plain)]) == 2
    assert main([str(plain), "--dataset", str(parquet_repo)]) == 0
    config = json.loads((plain / "config.json").read_text())
    assert config["temperature"] == pytest.approx(expected["temperature"], rel=1e-4)
    assert config["low_confidence_threshold"] == pytest.approx(expected["low_confidence_threshold"], rel=1e-4)
    record = json.loads((plain / "metrics.json").read_text())["final"]["calibration"]
    assert record["after"]["nll"] == pytest.approx(expected["after"]["nll"], rel=1e-4)
    card = (plain / "README.md").read_text()
    assert card.count("## Calibration") == 1 and f"(model(x) / {config['temperature']:.4g})" in card
    assert (plain / "calibration.png").is_file()
    assert main([str(plain), "--dataset", str(parquet_repo)]) == 0  # again: one section, one temperature in the snippet
    card = (plain / "README.md").read_text()
    assert card.count("## Calibration") == 1 and card.count("the calibration temperature") == 1


def test_recalibrating_on_a_dataset_of_other_classes_is_refused(trained, tmp_path):
    """A temperature fitted on another dataset's images would be written into the model's config and card."""
    import random

    from classifier.recalibrate import main

    plain = without_calibration(trained, tmp_path / "plain")
    before = (plain / "config.json").read_text()
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (tmp_path / "other" / split / label).mkdir(parents=True)
            shape_image("red", random.Random(len(label)), 32).save(tmp_path / "other" / split / label / "0.png")
    assert main([str(plain), "--dataset", str(tmp_path / "other")]) == 2
    assert (plain / "config.json").read_text() == before
