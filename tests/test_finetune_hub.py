"""Fine-tuning as a user with internet runs it, against the loopback Hub stand-in serving a timm-format
`timm/resnet18.a1_in1k` (random weights standing in for ImageNet's): the default run starts from them, the cache
serves them when the Hub is gone, `--pretrained` without them fails at once, a push that cannot happen fails
before training, and the whole loop (train -> push -> deploy-space -> the Space started from its own files)
answers as timm does on the pushed repo."""
from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from timm.models import save_for_hf

from benchmarks import load_app

from .helpers import free_port, shape_image
from .hub_standin import HubStandIn
from .test_hub import ROOT, hub_env, python

pytestmark = pytest.mark.slow  # the Hub stand-in and training processes

BASE = "timm/resnet18.a1_in1k"  # what timm's `resnet18` fetches
PUSHED = "tester/blobs-finetuned"
SMALL = ["--epochs", "1", "--img-size", "32", "--batch-size", "32", "--eval-batch-size", "64",
         "--samples-per-class", "2", "--failure-samples", "2"]


@pytest.fixture(scope="module")
def hub_with_resnet18(tmp_path_factory):
    """The stand-in, serving timm's resnet18 repo; -> (the stand-in, the served state dict)."""
    standin = HubStandIn().start()
    base = timm.create_model("resnet18", num_classes=1000)
    folder = tmp_path_factory.mktemp("base-repo")
    save_for_hf(base, str(folder), safe_serialization=True)
    standin.add_files("model", BASE, {p.name: p.read_bytes() for p in folder.iterdir()})
    yield standin, base.state_dict()
    standin.stop()


@pytest.fixture(scope="module")
def finetuned(hub_with_resnet18, parquet_repo, tmp_path_factory):
    """The default run as a user with internet types it, pushing what it made: -> (its environment, its folder,
    what it printed). One run serves the tests of its weights, of the cache it fills, and of the Space it feeds."""
    standin, _ = hub_with_resnet18
    folder = tmp_path_factory.mktemp("finetuned")
    env = hub_env(standin, folder / "home")
    out = folder / "model"
    result = python(env, "train_accelerate.py", "--dataset", parquet_repo, "--output-dir", out, "--push-to-hub",
                    PUSHED, *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    return env, out, result


def record(out: Path) -> dict:
    return json.loads((out / "training_args.json").read_text())


def assert_backbone_is(out: Path, served: dict) -> None:
    """One epoch, all of it the head's alone: the backbone comes out exactly as the Hub served it."""
    exported = load_file(out / "model.safetensors")
    for key in ("conv1.weight", "layer2.0.downsample.0.weight", "layer4.1.conv2.weight"):
        assert torch.equal(exported[key], served[key]), key
    assert exported["fc.weight"].shape == (4, 512)  # the 1000-class head replaced by one for the 4 classes


def test_the_default_run_fine_tunes_the_hub_weights(hub_with_resnet18, finetuned):
    standin, served = hub_with_resnet18
    _, out, result = finetuned
    revision = standin.repos[("model", BASE)].sha
    assert f"Recipe: fine-tuning, for weights hf-hub:{BASE}@{revision} (the Hub's)" in result.stdout
    weights = record(out)["resolved"]["weights"]
    assert weights == {"source": f"hf-hub:{BASE}@{revision}", "kind": "hub", "hub_id": BASE, "revision": revision,
                       "license": "apache-2.0", "why": "the Hub's"}
    assert record(out)["resolved"]["recipe"]["name"] == "finetune"
    assert_backbone_is(out, served)
    card = (out / "README.md").read_text()
    assert f"base_model: {BASE}\n" in card and "base_model_relation: finetune" in card
    assert "license: apache-2.0" in card and f"fine-tuned from [{BASE}]" in card


def test_with_the_hub_gone_the_cache_serves_the_weights_and_without_either_the_run_says_so(
        hub_with_resnet18, finetuned, parquet_repo, tmp_path):
    standin, served = hub_with_resnet18
    revision = standin.repos[("model", BASE)].sha
    # the Hub out of reach (nothing listens there): the same command starts from the same weights, out of the cache
    # the fine-tuning run filled
    env = dict(finetuned[0], HF_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    offline = tmp_path / "offline"
    result = python(env, "train_accelerate.py", "--dataset", parquet_repo, "--output-dir", offline, *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    weights = record(offline)["resolved"]["weights"]
    assert (weights["revision"], record(offline)["resolved"]["recipe"]["name"]) == (revision, "finetune")
    assert weights["why"].startswith("cached earlier (the Hub cannot be reached")
    assert_backbone_is(offline, served)

    # nothing cached and the Hub out of reach: --pretrained fails at once (it took 58 s of retries), the default
    # trains from scratch with the scratch recipe and says why
    env["HF_HOME"] = str(tmp_path / "empty-home")
    failed = python(env, "train_accelerate.py", "--dataset", parquet_repo, "--output-dir", tmp_path / "x",
                    "--pretrained", *SMALL)
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1].startswith(
        f"error: Cannot load pretrained weights for 'resnet18' ({BASE}): the Hub cannot be reached (")
    # one refused probe, then the cache alone: none of huggingface_hub's retries (5, with backoff, 58 s in all)
    assert "Retrying" not in failed.stderr and "retry" not in failed.stderr.lower()
    scratch = tmp_path / "scratch"
    result = python(env, "train_accelerate.py", "--dataset", parquet_repo, "--output-dir", scratch, *SMALL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert record(scratch)["resolved"]["recipe"]["name"] == "scratch"
    assert "Pretrained weights for 'resnet18' unavailable" in result.stderr


@pytest.mark.parametrize("repo, role, says", [
    ("someone-else/blobs", "write", "tester may not write to 'someone-else' (writable: tester)"),
    ("tester/blobs", "read", "the token is read-only; create a write token"),
])
def test_a_push_that_cannot_happen_fails_before_training(hub, parquet_repo, tmp_path, repo, role, says):
    hub.token_role = role  # an empty stand-in of its own: the refusal comes before any weights are asked for
    out = tmp_path / "model"
    result = python(hub_env(hub, tmp_path / "home"), "train_accelerate.py", "--dataset", parquet_repo,
                    "--output-dir", out, "--no-pretrained", "--push-to-hub", repo, *SMALL)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: Checking write access to {repo} failed: {says}."
    assert "Loading" not in result.stdout and not (out / "model.safetensors").exists()  # before the data, even
    assert ("model", repo) not in hub.repos


TIMM_PREDICTS = """
import json, sys, timm, torch
from huggingface_hub import hf_hub_download
from PIL import Image
model = timm.create_model("hf-hub:" + sys.argv[1], pretrained=True).eval()
config = json.loads(open(hf_hub_download(sys.argv[1], "config.json")).read())  # label names, temperature
x = timm.data.create_transform(**timm.data.resolve_data_config(model=model))(Image.open(sys.argv[2]).convert("RGB"))
with torch.inference_mode():
    views = torch.stack([x, x.flip(-1)])  # config.json says test_time_augmentation: flip
    probs = (model(views) / config["temperature"]).softmax(-1).mean(0)
print(json.dumps(dict(zip(config["label_names"], probs.tolist()))))
"""


def test_the_pushed_run_deploys_a_space_that_serves_it_from_its_own_files(hub_with_resnet18, finetuned, tmp_path):
    from gradio_client import Client, handle_file

    standin, _ = hub_with_resnet18
    env = finetuned[0]
    card = standin.repos[("model", PUSHED)].files["README.md"].decode()
    assert f"base_model: {BASE}" in card and f"hf-hub:{PUSHED}" in card
    assert str(finetuned[1].parent) not in card and "/tmp/" not in card  # no local path of the training machine
    pushed_args = json.loads(standin.repos[("model", PUSHED)].files["training_args.json"])
    assert "/tmp/" not in json.dumps(pushed_args)

    deployed = python(env, "-m", "classifier.hub", "deploy-space", "tester/blobs-demo", "--model", PUSHED,
                      "--flag-dataset", "tester/blobs-corrections", "--add-token-secret")
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    space = tmp_path / "space"  # the Space's repo, as a Space checks it out: nothing else of this project
    fetched = python(env, "-c", "import sys; from huggingface_hub import snapshot_download; "
                                "snapshot_download('tester/blobs-demo', repo_type='space', local_dir=sys.argv[1])",
                     space)
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    assert (space / "app.py").is_file() and not (space / "models").exists()

    image = tmp_path / "blob.png"
    shape_image("blue", random.Random(3), 32).save(image)
    deployed_space = standin.repos[("space", "tester/blobs-demo")]
    assert deployed_space.secrets == {"HF_TOKEN": env["HF_TOKEN"]}
    port = free_port()  # the Space's process: its variables and secrets are its environment
    app = load_app.start_server(["app.py", "--host", "127.0.0.1", "--port", str(port)], port,
                                dict(env, **deployed_space.variables, **deployed_space.secrets,
                                     INFERENCE_PRECISION="fp32"), cwd=space)
    try:
        client = Client(f"http://127.0.0.1:{port}", verbose=False)
        label, *_ = client.predict(handle_file(str(image)), 4, api_name="/predict")
        info = client.predict(api_name="/model_info")  # what About shows
        # --flag-dataset turned corrections on: the Space made the dataset at start and takes one
        assert standin.repos[("dataset", "tester/blobs-corrections")].private
        said = client.predict(handle_file(str(image)), label["label"], api_name="/flag")
        assert "tester/blobs-corrections" in said
    finally:
        app.terminate()
        app.wait(timeout=30)
    expected = python(env, "-c", TIMM_PREDICTS, PUSHED, image)
    assert expected.returncode == 0, expected.stderr[-3000:]
    expected = json.loads(expected.stdout.strip().splitlines()[-1])
    assert info["starting_weights"] == f"hf-hub:{BASE}@{standin.repos[('model', BASE)].sha}"
    served = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert label["label"] == max(expected, key=expected.get)
    assert served == pytest.approx(expected, abs=1e-4)


def test_the_pushed_model_is_evaluated_from_the_hub_as_its_run_scored_it(finetuned, parquet_repo):
    env, out, _ = finetuned
    result = python(env, "-m", "classifier.evaluate", PUSHED, "--dataset", parquet_repo, "--eval-batch-size", "64")
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = json.loads((out / "metrics.json").read_text())["final"]
    measured = re.match(r"test, (\d+) images: Accuracy ([0-9.]+), ", result.stdout)
    assert measured and int(measured[1]) == recorded["num_samples"], result.stdout
    # the run evaluated under its bf16 autocast, this in float32: one image of 60 may fall the other way
    assert float(measured[2]) == pytest.approx(recorded["accuracy"], abs=1 / recorded["num_samples"] + 1e-4)


def test_two_processes_fetch_the_weights_once_and_both_start_from_them(hub_with_resnet18, parquet_repo, tmp_path):
    standin, served = hub_with_resnet18
    out = tmp_path / "model"
    env = dict(hub_env(standin, tmp_path / "home"), OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1")
    fetched_before = standin.downloads[(BASE, "model.safetensors")]  # (the stand-in serves the whole module)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "train_accelerate.py", "--dataset", str(parquet_repo), "--output-dir", str(out), *SMALL],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    # the main process fetched, the other read the cache
    assert standin.downloads[(BASE, "model.safetensors")] == fetched_before + 1
    assert record(out)["num_processes"] == 2 and record(out)["resolved"]["recipe"]["name"] == "finetune"
    assert_backbone_is(out, served)


def test_a_later_push_names_the_repo_in_the_card(hub_with_resnet18, trained, tmp_path):
    standin, _ = hub_with_resnet18
    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    assert "<your-user>/" in (folder / "README.md").read_text()  # written before any repo was named
    pushed = python(hub_env(standin, tmp_path / "home"), "-m", "classifier.hub", "push", folder, "tester/later")
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    card = standin.repos[("model", "tester/later")].files["README.md"].decode()
    assert "<your-user>" not in card
    assert 'timm.create_model("hf-hub:tester/later"' in card and "MODEL_ID=tester/later python app.py" in card
    assert "<your-user>/" in (folder / "README.md").read_text()  # the local folder is left as it was
