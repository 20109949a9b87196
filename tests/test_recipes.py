"""The recipe a run applies: fine-tuning for pretrained weights, from scratch otherwise; the optimizer from timm's
factory, the head trained alone first, the lr following the global batch, resumes refused under another plan,
and no local path of the training machine in what a run publishes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from .helpers import TEST_MODEL, reset_accelerate_state, train

SMALL = ["--img-size", "32", "--batch-size", "32", "--eval-batch-size", "64", "--samples-per-class", "0",
         "--failure-samples", "0"]


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> tuple[Path, dict]:
    """A resnet18 weights file with an ImageNet-sized head, as a user's fine-tuning source."""
    source = timm.create_model("resnet18", num_classes=1000)
    path = tmp_path_factory.mktemp("weights") / "resnet18-source.safetensors"
    save_file(source.state_dict(), path)
    return path, source.state_dict()


def record(out: Path) -> dict:
    return json.loads((out / "training_args.json").read_text())


@pytest.mark.slow
def test_pretrained_weights_get_the_fine_tuning_recipe_and_the_head_trains_alone_first(parquet_repo, weights_file,
                                                                                      tmp_path, capsys):
    path, source = weights_file
    out = tmp_path / "model"
    train("--dataset", parquet_repo, "--output-dir", out, "--pretrained-file", path, "--epochs", "1", *SMALL)
    shown = capsys.readouterr().out
    resolved = record(out)["resolved"]
    assert resolved["recipe"]["name"] == "finetune"
    assert "Recipe: fine-tuning, for weights file:resnet18-source.safetensors (--pretrained-file)" in shown
    # the card names the file as the published record shows a path: outside the working folder, by its name
    assert "starting from the weights file `.../resnet18-source.safetensors`" in (out / "README.md").read_text()
    # and its config does not describe timm's ImageNet weights, which the run never saw
    pretrained_cfg = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert not {"paper_ids", "origin_url", "license"} & set(pretrained_cfg) and pretrained_cfg["input_size"]
    # the fine-tuning values were applied where nothing was given, and what was given stayed
    applied = record(out)
    assert (applied["optimizer"], applied["lr"], applied["layer_decay"], applied["freeze_epochs"]) == (
        "adamw", pytest.approx(1e-3 * (32 / 128) ** 0.5), None, 1)
    assert applied["epochs"] == 1 and resolved["recipe"]["given"] == ["batch_size", "epochs", "img_size"]
    # one epoch, all of it with the head alone: every backbone weight is exactly the file's, the head is new
    exported = load_file(out / "model.safetensors")
    for key in ("conv1.weight", "layer1.0.conv1.weight", "layer4.1.conv2.weight"):
        assert torch.equal(exported[key], source[key]), key
    assert exported["fc.weight"].shape == (4, 512)
    assert not torch.equal(exported["fc.weight"], torch.zeros_like(exported["fc.weight"]))


@pytest.mark.slow
def test_random_weights_get_the_scratch_recipe_and_an_option_given_always_wins(parquet_repo, weights_file, tmp_path):
    path, source = weights_file
    scratch = tmp_path / "scratch"
    train("--dataset", parquet_repo, "--output-dir", scratch, "--no-pretrained", "--epochs", "1", *SMALL)
    assert record(scratch)["resolved"]["recipe"]["name"] == "scratch"
    assert (record(scratch)["optimizer"], record(scratch)["layer_decay"]) == ("sgd", None)

    forced = tmp_path / "forced"
    train("--dataset", parquet_repo, "--output-dir", forced, "--pretrained-file", path, "--recipe", "scratch",
          "--epochs", "2", "--optimizer", "adamw", "--lr", "0.02", *SMALL)
    applied = record(forced)
    assert applied["resolved"]["recipe"]["name"] == "scratch"
    assert (applied["optimizer"], applied["lr"], applied["freeze_epochs"]) == ("adamw", 0.02, 0)  # as given
    assert applied["resolved"]["lr"]["rule"] == "none"  # a given lr is used as given
    exported = load_file(forced / "model.safetensors")
    assert not torch.equal(exported["conv1.weight"], source["conv1.weight"])  # no frozen phase: the backbone moved


@pytest.mark.slow
def test_the_lr_follows_the_global_batch(parquet_repo, tmp_path, capsys):
    out = tmp_path / "model"
    # SGD (the generic scratch recipe): linear in the global batch, 32 x 2 accumulation steps against 128
    train("--dataset", parquet_repo, "--output-dir", out, "--no-pretrained", "--epochs", "1",
          "--gradient-accumulation-steps", "2", *SMALL, *TEST_MODEL)  # no resnet18 weights file is read here
    lr = record(out)["resolved"]["lr"]
    assert lr == {"base": 0.1, "applied": pytest.approx(0.05), "rule": "linear", "global_batch": 64,
                  "reference_batch": 128}
    assert "lr 0.1 -> 0.05: linear scaling for a global batch of 64" in capsys.readouterr().out
    none = tmp_path / "none"
    train("--dataset", parquet_repo, "--output-dir", none, "--no-pretrained", "--epochs", "1", "--lr-scale", "none",
          *SMALL, *TEST_MODEL)
    assert record(none)["resolved"]["lr"]["applied"] == 0.1


def test_the_optimizer_comes_from_timm_and_spares_what_the_model_names(parquet_repo):
    from classifier.options import parse_args
    from classifier.train import build_optimizer, build_scheduler

    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=4)
    args = parse_args(["--dataset", "x", "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "0.05"])
    decay_of = {id(p): g["weight_decay"] for g in build_optimizer(args, vit, torch.device("cpu")).param_groups
                for p in g["params"]}
    assert decay_of[id(vit.pos_embed)] == 0.0 and decay_of[id(vit.cls_token)] == 0.0  # no_weight_decay()
    assert decay_of[id(vit.blocks[0].attn.qkv.weight)] == 0.05

    resnet = timm.create_model("resnet18", num_classes=4)
    args = parse_args(["--dataset", "x", "--optimizer", "adamw", "--lr", "1e-3", "--layer-decay", "0.5",
                       "--freeze-epochs", "1"])
    optimizer = build_optimizer(args, resnet, torch.device("cpu"))
    scheduler = build_scheduler(args, optimizer, resnet, total_steps=20, steps_per_epoch=10)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lr_of[id(resnet.conv1.weight)] == 0.0 and lr_of[id(resnet.fc.weight)] > 0  # the head alone first
    for _ in range(10):
        optimizer.step(), scheduler.step()
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    # then every layer, each at half the lr of the one above it (10 groups: stem, 8 blocks, head)
    assert lr_of[id(resnet.conv1.weight)] == pytest.approx(lr_of[id(resnet.fc.weight)] * 0.5 ** 9)
    assert lr_of[id(resnet.layer4[1].conv2.weight)] == pytest.approx(lr_of[id(resnet.fc.weight)] * 0.5)


@pytest.mark.slow
@pytest.mark.parametrize("change, named", [
    (["--seed", "1"], "--seed 0 (now 1)"),
    (["--batch-size", "16"], "--batch-size 32 (now 16)"),
    (["--gradient-accumulation-steps", "2"], "--gradient-accumulation-steps 1 (now 2)"),
    (["--max-train-samples", "200"], "--max-train-samples None (now 200)"),
])
def test_a_resume_under_another_plan_is_refused_naming_what_differs(parquet_repo, tmp_path_factory, capsys, change,
                                                                      named):
    out = tmp_path_factory.mktemp("resume") / "model"
    base = ["--dataset", parquet_repo, "--output-dir", out, "--no-pretrained", "--checkpoint-every", "3", *SMALL,
            *TEST_MODEL]
    train(*base, "--epochs", "1")  # 216 training images, 6 steps of 32: checkpoints at steps 3 and 6
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train(*base, "--epochs", "2", "--resume", "latest", *change)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "was saved by a run with " + named in error and "skip or repeat training images" in error
    reset_accelerate_state()


def test_what_a_run_publishes_names_no_local_path(trained, tmp_path):
    """The `trained` fixture wrote to an absolute temporary folder, from an absolute dataset path."""
    args, card = record(trained), (trained / "README.md").read_text()
    assert not any(str(value).startswith("/") for value in args.values() if isinstance(value, str))
    for text in (args["command"], card):
        assert "/tmp/" not in text and str(Path.home()) not in text
    assert f"--output-dir .../{trained.name}" in args["command"]
    assert "--dataset .../" in args["command"]


def test_a_weights_file_gives_its_backbone_and_never_its_head(tmp_path):
    """Even a file whose head has the run's class count: timm compares the count with its config's (1000), not the
    file's, and starts a fresh head (docs/TRAINING.md says so)."""
    from classifier.model import StartingWeights, create_model

    source = timm.create_model(TEST_MODEL[1], num_classes=4).state_dict()
    path = tmp_path / "four-classes.safetensors"
    save_file(source, path)
    model = create_model(TEST_MODEL[1], 4, StartingWeights("file", file=str(path)))
    state = model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in source.items() if not key.startswith("fc."))
    assert not torch.equal(state["fc.weight"], source["fc.weight"])
