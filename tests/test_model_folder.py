"""Incomplete or tampered model folders give clear errors; only safetensors are ever loaded."""
import json
import shutil

import pytest
import torch

from classifier.model import ModelSourceError, load, load_folder


@pytest.fixture
def copy(trained, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    return folder


def test_missing_config(copy):
    (copy / "config.json").unlink()
    with pytest.raises(ModelSourceError, match="config.json is missing"):
        load_folder(copy)


def test_pickled_weights_are_never_loaded(copy):
    torch.save({"conv1.weight": torch.zeros(1)}, copy / "pytorch_model.bin")
    (copy / "model.safetensors").unlink()
    with pytest.raises(ModelSourceError, match="pickled weights are never loaded"):
        load_folder(copy)


def test_shapes_that_do_not_match_the_config(copy):
    config = json.loads((copy / "config.json").read_text())
    config["num_classes"] = config["model_args"]["num_classes"] = 7
    config["label_names"] = [str(i) for i in range(7)]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSourceError, match="Cannot load the model"):
        load_folder(copy)


def test_truncated_weights(copy):
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelSourceError, match="Cannot load the model"):
        load_folder(copy)


def test_label_names_that_do_not_match_the_classes(copy):
    config = json.loads((copy / "config.json").read_text())
    config["label_names"] = config["label_names"][:2]
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSourceError, match="2 label names for 4 classes"):
        load_folder(copy)


def test_unknown_test_time_augmentation(copy):
    config = json.loads((copy / "config.json").read_text())
    config["test_time_augmentation"] = "ten_crop"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelSourceError, match="unknown test_time_augmentation 'ten_crop'"):
        load_folder(copy)


def test_a_path_that_is_not_a_model_folder(tmp_path):
    with pytest.raises(ModelSourceError, match="not a model folder|config.json is missing"):
        load(str(tmp_path))


def test_the_weights_are_as_readable_as_the_rest_of_the_folder(trained):
    """safetensors writes 0600; a server running as another user must read the weights as it reads config.json."""
    import stat

    mode = {name: stat.S_IMODE((trained / name).stat().st_mode) for name in ("model.safetensors", "config.json")}
    assert mode["model.safetensors"] == mode["config.json"], mode
