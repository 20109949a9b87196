"""What a model folder's card and config say about the model's data and weights: the dataset by its name (a local
copy said so, never its path), no description of weights it did not start from."""
from __future__ import annotations

import json
from pathlib import Path


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
