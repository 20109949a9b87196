"""The models shipped in models/ are what their cards claim: each classifies its own random sample of test
images (samples/gallery, drawn with a fixed seed, never picked by looking at predictions) at no less than
its reported test accuracy minus 5 points, with fp16 weights small enough to ship."""
import json

import pytest

from classifier.images import open_rgb
from classifier.model import load_folder
from classifier.predict import Predictor, bundled_model_folders

FOLDERS = bundled_model_folders()


def test_the_project_ships_a_model():
    assert FOLDERS, "models/ holds no model folder; the app would have nothing to serve by default"


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_bundled_model_classifies_its_samples_at_its_claimed_accuracy(folder):
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["final_split"] == "test"
    claimed = metrics["final"]["accuracy"]
    predictor = Predictor(load_folder(folder), folder.name)
    gallery = [s for s in predictor.samples if s.kind == "gallery"]
    per_class = {s.label for s in gallery}
    assert per_class == set(predictor.label_names) and len(gallery) >= 5 * len(per_class)
    top = predictor.classify_many([open_rgb(str(s.path)) for s in gallery], k=1)
    accuracy = sum(t[0][0] == s.label for t, s in zip(top, gallery)) / len(gallery)
    assert accuracy >= claimed - 0.05, f"{folder.name}: {accuracy:.1%} on its samples, claims {claimed:.1%}"
    exported = metrics["final"]["exported_weights"]  # measured by the training run on the full test split
    assert exported["dtype"] == "float16" and abs(exported["accuracy"] - claimed) <= 0.001
    card = (folder / "README.md").read_text()
    assert f"{claimed:.4f}" in card  # the card carries the test metrics the pipeline measured
    assert (folder / "model.safetensors").stat().st_size <= 23 * 2**20


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_bundled_cards_name_their_dataset_without_a_local_path(folder):
    record = json.loads((folder / "training_args.json").read_text())
    described = (folder / "README.md").read_text().split("## Training")[0]  # the command below keeps its path
    assert record["dataset"] not in described
    if record["dataset"].startswith((".", "/")):  # trained on a local copy: the card says so
        assert "split is a local copy" in described
    if not record["weights_source"].startswith("hf-hub:"):  # from scratch or a file: not timm's ImageNet weights
        pretrained_cfg = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
        assert not {"paper_ids", "origin_url", "license"} & set(pretrained_cfg)


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_a_bundled_model_fine_tuned_from_a_file_names_that_file(folder):
    record = json.loads((folder / "training_args.json").read_text())
    described = (folder / "README.md").read_text().split("## Training")[0]
    if record["weights_source"].startswith("file:"):
        assert f"starting from the weights file `{record['pretrained_file']}`" in described
        # a file of the project (another bundled model): its path says which one
        assert (folder.parents[1] / record["pretrained_file"]).is_file()
    else:
        assert "starting from the weights file" not in described
