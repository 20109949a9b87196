"""The real training pipeline on small generated datasets: learning, export format, resume, weights, errors."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import timm
import timm.data
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from classifier.augment import BatchAugment
from classifier.data import DataError, load_splits
from classifier.model import load_folder
from classifier.options import parse_args
from classifier.engine import Recipe, progressive_img_size

from .helpers import CLASSES, FAST, make_examples, reset_accelerate_state, train, write_parquet_repo

ROOT = Path(__file__).resolve().parents[1]


def test_learns_well_above_chance_and_writes_the_folder(trained):
    assert (trained / "samples" / "manifest.json").is_file()
    names = {p.name for p in trained.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "training_args.json", "metrics.json", "curves.png",
            "confusion_matrix.png"} <= names
    assert ".staging" not in names
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["final_split"] == "test"
    assert metrics["final"]["num_samples"] == 60
    assert metrics["final"]["accuracy"] >= 0.7, metrics["final"]  # chance is 0.25
    assert len(metrics["history"]) == 4
    for key in ("precision", "recall", "f1", "mcc", "roc_auc", "per_class", "confusion_matrix"):
        assert metrics["final"][key] is not None
    assert np.asarray(metrics["final"]["confusion_matrix"]).sum() == 60
    config = json.loads((trained / "config.json").read_text())
    assert config["architecture"] == "resnet18"
    assert config["label_names"] == CLASSES
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    card = (trained / "README.md").read_text()
    assert "library_name: timm" in card and "model-index" in card and "| red |" in card
    assert re.search(r'hf-hub:[^"/\s]+/resnet18-[^"/\s]+"', card)  # a loadable id shape even before any push
    # wall-clock figures mean little without the machine they were measured on
    record = json.loads((trained / "training_args.json").read_text())
    assert record["hardware"].startswith("cpu: ")
    # not launched: the record says python and the arguments this run was given, not the test runner's
    assert record["command"].startswith("python train_accelerate.py --dataset ") and "--epochs 4" in record["command"]


def test_sample_images_are_the_test_images_of_their_class(trained, parquet_repo):
    test = datasets.load_dataset(str(parquet_repo))["test"]
    label_of = {np.asarray(image.convert("RGB")).tobytes(): CLASSES[label]
                for image, label in zip(test["img"], test["fine_label"])}
    manifest = json.loads((trained / "samples" / "manifest.json").read_text())
    gallery = [e for e in manifest if e["kind"] == "gallery"]
    assert sorted(e["label"] for e in gallery) == sorted(CLASSES * 5)
    pictures = set()
    for entry in manifest:
        pixels = np.asarray(Image.open(trained / "samples" / entry["file"]).convert("RGB")).tobytes()
        assert label_of[pixels] == entry["label"], entry
        pictures.add((entry["kind"], pixels))
    assert len(pictures) == len(manifest)  # no picture twice in a gallery


def test_timm_alone_reproduces_the_reported_test_accuracy(trained, parquet_repo):
    """The format test: timm rebuilds the model and its own data config reproduces our eval preprocessing,
    and the card's recipe (the image and its mirror averaged, as config.json declares) the reported accuracy."""
    assert json.loads((trained / "config.json").read_text())["test_time_augmentation"] == "flip"
    model = timm.create_model(f"local-dir:{trained}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    test = datasets.load_dataset(str(parquet_repo))["test"]
    labels = torch.tensor(test["fine_label"])
    with torch.inference_mode():
        batch = torch.stack([transform(image.convert("RGB")) for image in test["img"]])
        single = model(batch).softmax(-1)
        averaged = (single + model(batch.flip(-1)).softmax(-1)) / 2
    final = json.loads((trained / "metrics.json").read_text())["final"]
    assert (averaged.argmax(-1) == labels).double().mean().item() == pytest.approx(final["accuracy"], abs=1e-9)
    assert (single.argmax(-1) == labels).double().mean().item() == pytest.approx(final["single_view_accuracy"],
                                                                                abs=1e-9)
    assert "x.flip(-1)" in (trained / "README.md").read_text()  # the card's snippet does what was measured
    # the project's loader gives the very same logits
    loaded = load_folder(trained)
    assert loaded.label_names == CLASSES
    with torch.inference_mode():
        assert torch.equal(loaded.model(batch), model(batch))


@pytest.mark.slow
def test_resume_mid_epoch_equals_uninterrupted(checkpointed_run, tmp_path, capsys):
    """From the uninterrupted run's checkpoint at step 14 (epoch 3, batch 2), into a folder of its own."""
    args, uninterrupted = checkpointed_run
    checkpoint = uninterrupted / "checkpoints" / "step_00000014"
    out = tmp_path / "model"
    capsys.readouterr()
    train(*args, "--output-dir", out, "--resume", checkpoint)
    assert f"Resumed from {checkpoint} (epoch 3, batch 2)." in capsys.readouterr().out
    expected, resumed = load_file(uninterrupted / "model.safetensors"), load_file(out / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    assert [h["epoch"] for h in json.loads((out / "metrics.json").read_text())["history"]] == [1, 2, 3]


@pytest.mark.slow
def test_streamed_training_set_gives_the_same_weights_as_the_in_memory_one(parquet_repo, tmp_path):
    """The streaming path (DataLoader workers decoding each batch) feeds the loop bit-identical batches."""
    args = ["--dataset", parquet_repo, "--epochs", "1", "--augment", "strong", "--random-erase", "0.5",
            "--samples-per-class", "0", *FAST]
    train(*args, "--output-dir", tmp_path / "memory", "--data-path", "memory")
    train(*args, "--output-dir", tmp_path / "stream", "--data-path", "stream", "--data-workers", "2")
    in_memory, streamed = load_file(tmp_path / "memory" / "model.safetensors"), load_file(
        tmp_path / "stream" / "model.safetensors")
    assert in_memory.keys() == streamed.keys()
    for key in in_memory:
        assert torch.equal(in_memory[key], streamed[key]), key
    for path in ("memory", "stream"):  # each run really took the path it was given
        assert json.loads((tmp_path / path / "training_args.json").read_text())["resolved_data_path"] == path


@pytest.mark.slow
def test_pretrained_file_weights_are_loaded(parquet_repo, tmp_path):
    source = timm.create_model("resnet18", num_classes=1000)
    weights = tmp_path / "imagenet-like.safetensors"
    save_file(source.state_dict(), weights)
    out = tmp_path / "model"
    # lr 0: the backbone must come out exactly as the file put it in
    train("--dataset", parquet_repo, "--output-dir", out, "--epochs", "1", "--lr", "0", "--img-size", "32",
          "--batch-size", "32", "--pretrained-file", weights)
    exported = load_file(out / "model.safetensors")
    assert torch.equal(exported["conv1.weight"], source.state_dict()["conv1.weight"])
    assert torch.equal(exported["layer4.1.conv2.weight"], source.state_dict()["layer4.1.conv2.weight"])
    assert exported["fc.weight"].shape == (4, 512)
    assert json.loads((out / "training_args.json").read_text())["weights_source"] == f"file:{weights.name}"


def test_kaggle_layout_splits_and_class_names(kaggle_folder):
    splits = load_splits(str(kaggle_folder), val_fraction=0.2)
    assert splits.label_names == sorted(CLASSES)  # imagefolder names classes by sorted folder name
    assert splits.validation_carved
    assert len(splits.train) + len(splits.validation) == 120 and len(splits.test) == 32
    # stratified: every class is in the validation split in proportion
    assert sorted(set(splits.validation["label"])) == [0, 1, 2, 3]


def test_a_folder_of_one_class_folder_is_told_it_needs_one_per_class(tmp_path):
    (tmp_path / "photos" / "sea").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8), (0, 0, 200 + i)).save(tmp_path / "photos" / "sea" / f"{i}.png")
    with pytest.raises(DataError, match=r"^No label column found .* A folder of images needs a folder per class, at "
                                        r"least two: photos/cat/1\.jpg, photos/dog/2\.jpg\.$"):
        load_splits(str(tmp_path / "photos"))


def test_column_overrides_and_validation_split_is_used(tmp_path):
    folder = write_parquet_repo(tmp_path, {"train": make_examples(10, 0), "validation": make_examples(3, 1)},
                                image_column="picture", label_column="target")
    splits = load_splits(str(folder))
    assert (splits.image_column, splits.label_column, splits.validation_carved) == ("picture", "target", False)
    assert len(splits.validation) == 12 and splits.test is None
    with pytest.raises(DataError, match="--label-column 'nope' is not a column"):
        load_splits(str(folder), label_column="nope")


def test_bad_datasets_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="Cannot load dataset 'no/such-dataset-anywhere'"):
        load_splits("no/such-dataset-anywhere")
    unlabeled = tmp_path / "unlabeled"
    ds = datasets.Dataset.from_dict({"image": [im for im, _ in make_examples(3, 0)]},
                                    features=datasets.Features({"image": datasets.Image()}))
    ds.to_parquet(str(unlabeled / "data" / "train-00000-of-00001.parquet"))
    with pytest.raises(DataError, match="No label column"):
        load_splits(str(unlabeled))


def corrupt_folder(root: Path) -> Path:
    for i, (image, label) in enumerate(make_examples(12, seed=5)):
        path = root / "train" / CLASSES[label] / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    bad = root / "train" / "red" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    return bad


@pytest.mark.parametrize("data_path", ["memory", "stream"])
def test_corrupt_image_is_named_or_skipped(tmp_path, data_path, capsys):
    corrupt_folder(tmp_path / "data")
    with pytest.raises(SystemExit) as exited:
        train("--dataset", tmp_path / "data", "--output-dir", tmp_path / "out", "--epochs", "1", "--val-fraction",
              "0.25", "--data-path", data_path, *FAST)
    stderr = capsys.readouterr().err
    assert exited.value.code == 2
    assert "broken.png" in stderr and "--skip-bad-images" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "out" / "config.json").exists()
    train("--dataset", tmp_path / "data", "--output-dir", tmp_path / "out", "--epochs", "1", "--val-fraction", "0.25",
          "--skip-bad-images", "--data-path", data_path, *FAST)
    skipped = json.loads((tmp_path / "out" / "metrics.json").read_text())["skipped_images"]
    assert sum(skipped.values()) == 1


def test_random_erase_hides_one_box_per_image_and_nothing_else():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    outputs = {}
    for p in (0.0, 1.0):
        torch.manual_seed(0)  # the same shifts and flips in both; erasing draws its noise after them
        outputs[p] = BatchAugment("basic", 64, (0.5,) * 3, (0.25,) * 3, random_erase=p)(images)
    changed = (outputs[0.0] != outputs[1.0]).any(dim=1)  # (B, H, W): pixels the erasing touched
    for mask in changed:
        rows, cols = mask.any(dim=1).nonzero().flatten(), mask.any(dim=0).nonzero().flatten()
        box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.float().mean() > 0.99  # one solid rectangle, nothing outside it
        assert 0.02 * 64 * 64 * 0.9 <= box.numel() <= 64 * 64 / 3 * 1.1  # timm's 2-33 % of the image


def test_mixup_takes_a_batch_that_lost_an_image():
    """A streamed batch without its undecodable images may be odd-sized; timm's Mixup pairs images."""
    args = parse_args(["--dataset", "cifar10", "--mixup", "0.2", "--cutmix", "1.0", "--img-size", "32"])
    recipe = Recipe.from_args(args, 4, (0.5,) * 3, (0.25,) * 3)
    x, targets, labels = recipe(torch.randint(0, 256, (15, 3, 32, 32), dtype=torch.uint8), torch.arange(15) % 4, 32)
    assert x.shape[0] == targets.shape[0] == len(labels) == 14 and targets.shape[1] == 4
    assert torch.equal(labels, torch.arange(14) % 4)


def test_help_and_usage_errors_answer_before_torch_is_imported(tmp_path):
    """The script itself (the other usage errors are tested through train.main in-process): --help and a refused
    option answer from the options alone, in a fraction of a second, not after the seconds torch, timm and
    datasets take to import (-X importtime lists every module the process imported)."""
    def script(*args):
        return subprocess.run([sys.executable, "-X", "importtime", "train_accelerate.py", *args], capture_output=True,
                              text=True, cwd=ROOT, timeout=60)

    refused = script("--dataset", str(tmp_path), "--augment", "none", "--random-erase", "0.25")
    assert refused.returncode == 2 and "--random-erase needs --augment basic or strong" in refused.stderr
    helped = script("--help")
    assert helped.returncode == 0 and "--random-erase PROB" in helped.stdout
    for result in (refused, helped):
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time")}
        assert "classifier.options" in imported and not imported & {"torch", "timm", "datasets", "accelerate"}


def test_preset_erasing_is_a_default_that_augment_none_turns_off():
    assert parse_args(["--dataset", "cifar10"]).random_erase == 0.5
    assert parse_args(["--dataset", "cifar10", "--random-erase", "0"]).random_erase == 0
    assert parse_args(["--dataset", "cifar10", "--augment", "none"]).random_erase == 0


def test_progressive_resizing_schedule_grows_from_the_minimum_to_the_full_size():
    sizes = [progressive_img_size(e, 30, 32, 96, (0.25, 0.75)) for e in range(30)]
    assert sizes[:8] == [32] * 8 and sizes[-7:] == [96] * 7  # first quarter small, last quarter full size
    assert sizes == sorted(sizes) and len(set(sizes)) == 5  # 32, 48, 64, 80, 96
    assert all(s % 16 == 0 for s in sizes)
    # an odd full size is reached exactly, and no ramp (the default: --min-img-size = --img-size) changes nothing
    assert progressive_img_size(29, 30, 64, 100, (0.25, 0.75)) == 100
    assert {progressive_img_size(e, 10, 96, 96, (0.25, 0.75)) for e in range(10)} == {96}


@pytest.mark.slow
def test_progressive_resizing_trains_small_first_and_exports_the_full_size(parquet_repo, tmp_path, capsys):
    out = tmp_path / "model"
    train("--dataset", parquet_repo, "--output-dir", out, "--epochs", "2", "--min-img-size", "16",
          "--resize-ramp", "0.5,0.5", "--samples-per-class", "0", *FAST)
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["img_size"] for h in history] == [16, 32]
    log = capsys.readouterr().out
    assert "epoch 1/2 (trained at 16px, validated at 32px): train loss" in log and "epoch 2/2: train loss" in log
    assert json.loads((out / "config.json").read_text())["pretrained_cfg"]["input_size"] == [3, 32, 32]


def test_a_training_size_under_the_cached_one_is_downsampled_with_antialiasing():
    # a 1-pixel checkerboard shrunk to 20 px becomes (nearly) flat grey, where sampling the grid alone would leave
    # stripes about 40 grey levels deep
    checkerboard = ((torch.arange(32)[:, None] + torch.arange(32)) % 2 * 255).to(torch.uint8).expand(4, 3, 32, 32)
    small = BatchAugment("basic", 32, (0.5,) * 3, (0.25,) * 3)(checkerboard.contiguous(), 20)
    assert small.shape == (4, 3, 20, 20) and small.std() * 0.25 * 255 < 5  # in grey levels


def test_min_img_size_above_img_size_or_a_ramp_without_it_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        train("--dataset", tmp_path, "--img-size", "64", "--min-img-size", "96")
    assert exited.value.code == 2
    assert "--min-img-size must be between 1 and --img-size (64)" in capsys.readouterr().err
    # a ramp without a minimum size would change nothing, silently
    with pytest.raises(SystemExit) as exited:
        train("--dataset", tmp_path, "--resize-ramp", "0.1,0.9")
    assert exited.value.code == 2
    assert "--resize-ramp shapes progressive resizing, which needs --min-img-size" in capsys.readouterr().err


def test_tta_gain_reproduces_the_runs_final_evaluation(trained, parquet_repo, capsys):
    from benchmarks.tta_gain import main as tta_gain

    reset_accelerate_state()
    assert tta_gain([str(trained), "--dataset", str(parquet_repo), "--mixed-precision", "no"]) == 0
    final = json.loads((trained / "metrics.json").read_text())["final"]
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    history = json.loads((trained / "metrics.json").read_text())["history"]
    validation, test = rows[1].split(" | "), rows[2]
    # carved from train exactly as training carved it: the same images give the same single-view accuracy
    assert validation[0] == "| validation" and float(validation[2]) == pytest.approx(100 * history[-1]["val_accuracy"],
                                                                                    abs=0.005)
    alone, both = 100 * final["single_view_accuracy"], 100 * final["accuracy"]
    assert test == f"| test | 60 | {alone:.2f} | {both:.2f} | {both - alone:+.2f} |"


def test_test_time_flip_follows_the_augmentation():
    assert parse_args(["--dataset", "cifar10"]).tta == "flip"  # trained with flips: predict on both mirror images
    assert parse_args(["--dataset", "cifar10", "--augment", "none"]).tta == "none"
    assert parse_args(["--dataset", "cifar10", "--tta", "none"]).tta == "none"


def test_help_documents_options_with_defaults(capsys):
    with pytest.raises(SystemExit) as exited:
        train("--help")
    assert exited.value.code == 0
    stdout = capsys.readouterr().out
    for option in ("--dataset", "--pretrained-file", "--mixed-precision", "--checkpoint-every", "--resume",
                   "--push-to-hub", "--augment", "--val-fraction", "(default: 0.1)"):
        assert option in stdout
    # each option states one default, the true one: none printed as "None" or twice, none contradicting a flag
    text = " ".join(stdout.split())
    assert "(default: None)" not in text and "(default: True)" not in text and "(default: False)" not in text
    assert text.count("(default:") == len(re.findall(r"\(default: [^)]*\)", text))
    assert not re.search(r"default[^()]*\) \(default:", text)
    assert "--epochs EPOCHS passes over the training set (default: the preset's, else 10)" in text


@pytest.mark.slow
def test_failed_push_says_why_and_keeps_the_folder(trained, tmp_path):
    """Nothing listens on port 9 of loopback: the push must fail plainly, exit non-zero, and touch nothing."""
    before = {p.name: p.stat().st_mtime_ns for p in trained.iterdir()}
    token = "hf_secretTOKEN1234567890"
    result = subprocess.run(
        [sys.executable, "-c", "from classifier.hub import push_folder, HubError\n"
         "import sys\ntry:\n push_folder(sys.argv[1], 'me/model')\nexcept HubError as e:\n print(e); sys.exit(3)",
         str(trained)],
        capture_output=True, text=True, cwd=ROOT,
        env=dict(os.environ, HF_ENDPOINT="http://127.0.0.1:9", HF_TOKEN=token, HF_HUB_OFFLINE="0",
                 HF_HUB_DISABLE_XET="1", HF_HUB_ETAG_TIMEOUT="2"),
        timeout=120,
    )
    assert result.returncode == 3
    assert "Push to me/model failed" in result.stdout
    assert token not in result.stdout + result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in trained.iterdir()} == before


@pytest.mark.slow  # torch.compile: inductor compiles the training and the evaluation graphs
def test_compiled_training_exports_a_plain_timm_model(parquet_repo, tmp_path):
    from torch._dynamo.utils import counters, guard_failures

    out = tmp_path / "model"
    torch._dynamo.reset()
    counters.clear()
    try:
        # every batch of one shape per mode: training 32, evaluation 12 (24 validation and 60 test images) without
        # the mirror view, so that nothing is compiled again for a batch size
        train("--dataset", parquet_repo, "--output-dir", out, "--epochs", "1", "--compile", "--samples-per-class",
              "0", "--weights-dtype", "float16", *FAST, "--eval-batch-size", "12", "--tta", "none")
        graphs, compiled = counters["stats"]["unique_graphs"], counters["aot_autograd"]["ok"]
        recompiles = [reason for reasons in guard_failures.values() for reason in reasons]
    finally:
        torch._dynamo.reset()  # later in-process runs start from an empty compile cache, as a new process would
    # dynamo captured the model's graphs and AOTAutograd compiled them (forward and backward for training)
    assert graphs >= 2 and compiled >= 2, dict(counters)
    # the one recompilation is training -> evaluation (grad mode), none for a batch shape
    assert len(recompiles) == 1 and "GLOBAL_STATE changed: grad_mode" in recompiles[0], recompiles
    assert json.loads((out / "training_args.json").read_text())["resolved"]["dynamo_backend"] == "inductor"
    assert not [k for k in load_file(out / "model.safetensors") if "_orig_mod" in k]
    model = load_folder(out).model  # loads with timm's strict key check
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, len(CLASSES))


def applied_gradient_norms(checkpoints: list[Path]) -> list[float]:
    """The norm of the gradient each Adam step applied, from its first moment in the checkpoints of consecutive steps
    (m_k = b1 m_(k-1) + (1 - b1) g_k, with m_0 = 0; without weight decay g_k is the gradient after clipping)."""
    norms, previous = [], None
    for folder in checkpoints:
        saved = torch.load(folder / "optimizer.bin", weights_only=True)
        beta1 = saved["param_groups"][0]["betas"][0]
        moments = [state["exp_avg"].double() for _, state in sorted(saved["state"].items())]
        previous = previous or [torch.zeros_like(m) for m in moments]
        squares = sum(((m - beta1 * p) / (1 - beta1)).square().sum() for m, p in zip(moments, previous))
        norms.append(squares.sqrt().item())
        previous = moments
    return norms


@pytest.mark.slow
def test_strong_augmentation_mixup_cosine_clipping_and_accumulation_take_effect(parquet_repo, tmp_path, monkeypatch):
    from timm.loss import SoftTargetCrossEntropy
    from torchvision.transforms import v2

    # what the loop hands timm's mixup loss and torchvision's TrivialAugment (spied on, each still doing its work)
    targets, trivial = [], []
    loss_forward, trivial_forward = SoftTargetCrossEntropy.forward, v2.TrivialAugmentWide.forward

    def soft_loss(self, x, target):
        targets.append(target.detach().float().clone())
        return loss_forward(self, x, target)

    def trivial_augment(self, images):
        augmented = trivial_forward(self, images)
        trivial.append(not torch.equal(augmented, images))
        return augmented

    monkeypatch.setattr(SoftTargetCrossEntropy, "forward", soft_loss)
    monkeypatch.setattr(v2.TrivialAugmentWide, "forward", trivial_augment)
    out = tmp_path / "model"
    clip = 0.1  # under the norms test_resnet's own gradients keep to the end
    train("--dataset", parquet_repo, "--output-dir", out, "--epochs", "2", "--report-to", "tensorboard",
          "--augment", "strong", "--mixup", "0.2", "--cutmix", "1.0", "--scheduler", "cosine", "--optimizer", "adam",
          "--lr", "1e-3", "--weight-decay", "0", "--clip-grad", clip, "--gradient-accumulation-steps", "2",
          "--checkpoint-every", "1", "--checkpoint-limit", "6", "--drop-rate", "0.1", "--model-arg",
          "output_stride=16", "--model-arg", "drop_path_rate=0.05", "--weights-dtype", "float16", "--mixed-precision",
          "no", *FAST)
    assert list((out / "logs").rglob("events.out.tfevents.*"))
    # accumulation: 216 images, 6 batches of 32 an epoch, 2 per optimizer step: 6 steps in 2 epochs, not 12
    checkpoints = sorted((out / "checkpoints").glob("step_*"))
    assert [c.name for c in checkpoints] == [f"step_{k:08d}" for k in range(1, 7)]
    records = [json.loads((c / "training_state.json").read_text()) for c in checkpoints]
    assert [(r["progress"]["epoch"], r["progress"]["batches_done"]) for r in records] == [
        (0, 2), (0, 4), (0, 6), (1, 2), (1, 4), (1, 6)]
    # cosine: a linear warm-up from a tenth of the peak over the first epoch (3 steps), then half a cosine down
    # to a thousandth of it; the lr after each step as the schedule saved it
    lrs = [max(r["scheduler"]["_last_lr"]) for r in records]
    cosine = [1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * p)) for p in (0, 1 / 3, 2 / 3, 1)]
    assert lrs == pytest.approx([1e-3 * f for f in (0.4, 0.7, *cosine)], rel=1e-6)
    # clipping: every step applied a gradient of norm --clip-grad (the model's own are larger)
    assert applied_gradient_norms(checkpoints) == pytest.approx([clip] * 6, rel=1e-4)
    # mixup / cutmix: every batch's targets, label smoothing taken out, are each image's label and its partner's
    # (the batch reversed) in the proportions lam and 1 - lam, one lam per batch
    assert len(targets) == 12
    smoothing = json.loads((out / "training_args.json").read_text())["label_smoothing"]
    off, on = smoothing / len(CLASSES), 1 - smoothing + smoothing / len(CLASSES)
    mixed = 0
    for target in targets:
        z = (target - off) / (on - off)
        assert torch.allclose(target.sum(-1), torch.ones(len(target)), atol=1e-5)
        assert torch.allclose(z + z.flip(0), (z + z.flip(0)).round(), atol=1e-5)  # two labels shared by a pair
        soft = z[(z > 1e-4) & (z < 1 - 1e-4)]
        if len(soft):
            mixed += 1
            lam = soft.max()
            assert torch.allclose(torch.minimum((soft - lam).abs(), (soft - (1 - lam)).abs()),
                                  torch.zeros_like(soft), atol=1e-5)
    assert mixed >= 10, mixed
    # strong augmentation: TrivialAugment on every batch, in groups of 8 images, most of them changed
    assert len(trivial) == 12 * 32 // 8 and sum(trivial) > len(trivial) / 2, trivial
    model_args = json.loads((out / "config.json").read_text())["model_args"]
    assert {k: model_args[k] for k in ("drop_rate", "output_stride", "drop_path_rate")} == {
        "drop_rate": 0.1, "output_stride": 16, "drop_path_rate": 0.05}
    # timm alone rebuilds the same architecture from config.json: layer4 keeps stride 1 (dilated) at output_stride 16
    rebuilt = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert rebuilt.layer4[0].conv1.stride == (1, 1) and rebuilt.feature_info[-1]["reduction"] == 16
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 2
    # fp16 export: the file holds fp16 tensors and the run measured the accuracy of exactly those weights (timm
    # loading the file reproduces it, with the mirror view the card declares)
    exported = load_file(out / "model.safetensors")
    assert {t.dtype for t in exported.values() if t.is_floating_point()} == {torch.float16}
    check = metrics["final"]["exported_weights"]
    assert check["dtype"] == "float16"
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    test = datasets.load_dataset(str(parquet_repo))["test"]
    with torch.inference_mode():
        batch = torch.stack([transform(image.convert("RGB")) for image in test["img"]])
        probs = (model(batch).softmax(-1) + model(batch.flip(-1)).softmax(-1)) / 2
    assert (probs.argmax(-1) == torch.tensor(test["fine_label"])).double().mean().item() == pytest.approx(
        check["accuracy"], abs=1e-9)


def test_compare_runs_tables_and_plots_finished_runs(trained, tmp_path, capsys):
    """The recipe study's table and figure are made from run folders alone (benchmarks/compare_runs.py)."""
    from benchmarks.compare_runs import main as compare_runs

    figure = tmp_path / "runs.png"
    assert compare_runs([str(trained), "--plot", str(figure), "--group", f"one group={trained.name}",
                         "--group", f"another={trained.name}"]) == 0
    final = json.loads((trained / "metrics.json").read_text())["final"]
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {trained.name} |"))
    assert f"| {100 * final['accuracy']:.2f} (flip; alone {100 * final['single_view_accuracy']:.2f}) |" in row
    width, height = Image.open(figure).size
    assert height > width / 2  # two groups: two rows of panels
    with pytest.raises(SystemExit, match="no finished run named nope"):
        compare_runs([str(trained), "--plot", str(figure), "--group", "missing=nope"])


def test_time_to_accuracy_tabulates_finished_runs_in_one_figure(trained, tmp_path, capsys):
    import shutil

    from benchmarks.time_to_accuracy import main as time_to_accuracy

    other = tmp_path / "other-run"
    shutil.copytree(trained, other, ignore=shutil.ignore_patterns("checkpoints"))
    figure = tmp_path / "both.png"
    assert time_to_accuracy(["--folder", str(trained), "--folder", str(other), "--plot", str(figure),
                             "--target", "0.5"]) == 0
    out = capsys.readouterr().out
    history = json.loads((trained / "metrics.json").read_text())["history"]
    first = next(h for h in history if h["val_accuracy"] >= 0.5)
    assert out.count(f"validation reached 50% after: {first['elapsed_seconds'] / 60:.1f} min") == 2
    assert f"{trained.name}\n| epoch |" in out and "other-run\n| epoch |" in out
    assert Image.open(figure).size[0] > 0
    # two folders of the same name are two runs, labelled by their paths
    same_name = tmp_path / "elsewhere" / trained.name
    shutil.copytree(trained, same_name, ignore=shutil.ignore_patterns("checkpoints"))
    assert time_to_accuracy(["--folder", str(trained), "--folder", str(same_name), "--plot", str(figure)]) == 0
    out = capsys.readouterr().out
    assert f"{trained}\n| epoch |" in out and f"{same_name}\n| epoch |" in out
