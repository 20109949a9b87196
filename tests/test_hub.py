"""The Hub round trip against the loopback stand-in (tests/hub_standin.py): push, pull with timm and the app,
datasets from the Hub, Space deployment, and failures. Hub clients run in subprocesses because
huggingface_hub reads HF_ENDPOINT / HF_HUB_OFFLINE / HF_HUB_DISABLE_XET when it is imported."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from benchmarks import load_app

from .helpers import FAST, free_port, make_examples, write_parquet_repo
from .hub_standin import HubStandIn

pytestmark = pytest.mark.slow  # the Hub stand-in, and Hub clients in subprocesses

ROOT = Path(__file__).resolve().parents[1]


def hub_env(hub: HubStandIn, home: Path, token: str | None = None) -> dict:
    return dict(os.environ, HF_ENDPOINT=hub.url, HF_TOKEN=token or hub.token, HF_HUB_OFFLINE="0",
                HF_HUB_DISABLE_XET="1", HF_UPDATE_DOWNLOAD_COUNTS="0", HF_HOME=str(home),
                HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="10", PYTHONPATH=str(ROOT))


def python(env: dict, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


SAME_LOGITS = """
import sys, timm, torch
hub = timm.create_model("hf-hub:" + sys.argv[1], pretrained=True).eval()
local = timm.create_model("local-dir:" + sys.argv[2], pretrained=True).eval()
x = torch.randn(3, 3, 32, 32)
with torch.inference_mode():
    assert torch.equal(hub(x), local(x)), "logits differ"
print("identical")
"""


def test_train_with_push_then_timm_loads_it_from_the_hub(hub, parquet_repo, tmp_path):
    env = hub_env(hub, tmp_path / "home")
    out = tmp_path / "model"
    result = python(env, "train_accelerate.py", "--dataset", parquet_repo, "--output-dir", out, "--epochs", "1",
                    "--checkpoint-every", "epoch", "--push-to-hub", "tester/blobs", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    stored = set(hub.repos[("model", "tester/blobs")].files)
    assert {"config.json", "model.safetensors", "README.md", "metrics.json"} <= stored
    assert not any(f.startswith(("checkpoints/", "logs/")) for f in stored)
    check = python(env, "-c", SAME_LOGITS, "tester/blobs", out)
    assert check.returncode == 0 and "identical" in check.stdout, check.stderr[-3000:]


def test_push_uploads_exactly_the_model_folder(hub, trained, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(trained, folder)
    (folder / "checkpoints" / "step_00000001").mkdir(parents=True)
    (folder / "checkpoints" / "step_00000001" / "model.safetensors").write_bytes(b"0")
    (folder / "logs").mkdir()
    (folder / "logs" / "events").write_bytes(b"0")
    result = python(hub_env(hub, tmp_path / "home"), "-m", "classifier.hub", "push", folder, "tester/pushed")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
                and p.relative_to(folder).parts[0] not in ("checkpoints", "logs")}
    assert set(hub.repos[("model", "tester/pushed")].files) == expected
    assert "tester/pushed" in result.stdout


def test_deploy_space_creates_the_repo_and_sets_model_id(hub, trained, tmp_path):
    env = hub_env(hub, tmp_path / "home")
    assert python(env, "-m", "classifier.hub", "push", trained, "tester/blobs").returncode == 0
    corrections = ["--flag-dataset", "tester/demo-corrections"]
    dry = python(env, "-m", "classifier.hub", "deploy-space", "tester/demo", "--model", "tester/blobs", *corrections,
                 "--dry-run")
    assert dry.returncode == 0 and "app.py" in dry.stdout and "variable MODEL_ID=tester/blobs" in dry.stdout
    assert "variable FLAG_DATASET=tester/demo-corrections" in dry.stdout
    folder = python(env, "-m", "classifier.hub", "deploy-space", "tester/demo", "--model", trained, "--dry-run")
    assert folder.returncode == 3 and f"error: --model '{trained}' is not a Hub repo id (owner/name)." in folder.stderr
    assert ("space", "tester/demo") not in hub.repos
    result = python(env, "-m", "classifier.hub", "deploy-space", "tester/demo", "--model", "tester/blobs",
                    "--model-revision", "main", *corrections)
    assert result.returncode == 0, result.stderr[-3000:]
    # corrections are written with the Space's token, which this run did not store
    assert "needs an HF_TOKEN secret that may write there" in result.stderr
    space = hub.repos[("space", "tester/demo")]
    assert {"app.py", "requirements.txt", "README.md", "classifier/ui.py", "classifier/server.py",
            "classifier/metrics/classification_report/classification_report.py"} <= set(space.files)
    assert not any(f.startswith(("tests/", "models/", "runs/")) for f in space.files)
    readme = space.files["README.md"].decode()
    assert "sdk: gradio" in readme and "app_file: app.py" in readme and "- tester/blobs" in readme
    # the Python CI tests, as in this project's own Space card
    assert 'python_version: "3.11"' in readme and 'python_version: "3.11"' in (ROOT / "README.md").read_text()
    # the Gradio the requirements pin (with its [mcp] extra), as this project's own card says
    pin = re.search(r"^gradio\[mcp\]==([\w.]+)", (ROOT / "requirements-space.txt").read_text(), re.M).group(1)
    assert f"sdk_version: {pin}\n" in readme and f"sdk_version: {pin}\n" in (ROOT / "README.md").read_text()
    assert space.variables == {"MODEL_ID": "tester/blobs", "MODEL_REVISION": "main",
                               "FLAG_DATASET": "tester/demo-corrections"}
    # what serving needs and no more, with PyTorch's CPU index on this cpu-basic Space
    requirements = space.files["requirements.txt"].decode()
    assert requirements == f"--extra-index-url {CPU_TORCH_INDEX}\n" + (ROOT / "requirements-space.txt").read_text()
    assert {"torch", "timm", "gradio"} <= requirement_names(requirements)
    assert not TRAINING_ONLY.keys() & requirement_names(requirements)


def start_app(env: dict) -> tuple[subprocess.Popen, str]:
    port = free_port()
    return load_app.start_app(None, port, env), f"http://127.0.0.1:{port}"


def test_app_pulls_model_id_and_falls_back_when_the_hub_is_gone(hub, trained, corpus_image, tmp_path):
    env = hub_env(hub, tmp_path / "home")
    assert python(env, "-m", "classifier.hub", "push", trained, "tester/blobs").returncode == 0
    env["MODEL_ID"] = "tester/blobs"
    app, url = start_app(env)
    try:
        health = httpx.get(f"{url}/healthz").json()
        assert health["models"][0] == "tester/blobs" and health["notice"] is None
        with open(corpus_image, "rb") as f:
            response = httpx.post(f"{url}/api/classify", params={"model": "tester/blobs"}, files={"file": f})
        assert response.status_code == 200 and response.json()["model"] == "tester/blobs"
        # the token that pulled the model appears in no answer and no log line
        answers = [httpx.get(f"{url}{path}").text for path in ("/healthz", "/config", "/api/model_info", "/api/stats")]
        assert hub.token not in "".join(answers) + response.text
    finally:
        app.terminate()
        app.wait(timeout=30)
    app.log.seek(0)
    log = app.log.read()
    assert hub.token not in log
    assert "HTTP Request:" not in log  # httpx logs each request at INFO: not in the Space's log

    hub.stop()
    app, url = start_app(env)  # the Hub gone, the model in the cache: served from there
    try:
        health = httpx.get(f"{url}/healthz").json()
        assert health["models"][0] == "tester/blobs" and health["notice"] is None
    finally:
        app.terminate()
        app.wait(timeout=30)
    env["HF_HOME"] = str(tmp_path / "empty-home")  # nothing cached: the Hub is really needed
    app, url = start_app(env)
    try:
        health = httpx.get(f"{url}/healthz").json()
        assert "tester/blobs" not in health["models"] and health["models"]  # the bundled model(s)
        assert "Could not load the model 'tester/blobs' named by the MODEL_ID variable" in health["notice"]
        assert "tester/blobs" in httpx.get(url + "/config").text  # the notice is on the page
        assert hub.token not in health["notice"] + httpx.get(url + "/config").text
    finally:
        app.terminate()
        app.wait(timeout=30)
    app.log.seek(0)
    assert hub.token not in app.log.read()


def test_dataset_repo_on_the_hub_trains_and_streams(hub, tmp_path):
    repo = write_parquet_repo(tmp_path / "ds", {"train": make_examples(20, 0), "test": make_examples(5, 1)})
    hub.add_files("dataset", "tester/blobs-data",
                  {str(p.relative_to(repo)): p.read_bytes() for p in repo.rglob("*.parquet")})
    env = hub_env(hub, tmp_path / "home")
    out = tmp_path / "model"
    result = python(env, "train_accelerate.py", "--dataset", "tester/blobs-data", "--output-dir", out,
                    "--epochs", "1", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["final"]["num_samples"] == 20
    stream = python(env, "-c", "import datasets; s = datasets.load_dataset('tester/blobs-data', split='train', "
                               "streaming=True); print(sorted(next(iter(s))))")
    assert stream.returncode == 0 and "['fine_label', 'img']" in stream.stdout, stream.stderr[-3000:]


def test_push_with_a_bad_token_no_token_or_no_server(hub, trained, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in trained.iterdir()}
    bad_token = "hf_wrongwrongwrong1234"
    rejected = python(hub_env(hub, tmp_path / "home", token=bad_token), "-m", "classifier.hub", "push", trained,
                      "tester/blobs")
    assert rejected.returncode == 3
    assert "token was rejected" in rejected.stderr
    assert bad_token not in rejected.stdout + rejected.stderr
    env = hub_env(hub, tmp_path / "home")
    env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    down = python(env, "-m", "classifier.hub", "push", trained, "tester/blobs")
    assert down.returncode == 3 and "cannot reach the Hub" in down.stderr
    assert hub.token not in down.stdout + down.stderr
    no_token = hub_env(hub, tmp_path / "home-without-token")
    del no_token["HF_TOKEN"]
    missing = python(no_token, "-m", "classifier.hub", "push", trained, "tester/blobs")
    assert missing.returncode == 3 and "no token (set HF_TOKEN or run `hf auth login`)" in missing.stderr, \
        missing.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in trained.iterdir()} == before


# training's own packages (requirements.txt over requirements-space.txt) -> import name; tqdm is left out:
# huggingface_hub installs it anyway
TRAINING_ONLY = {"datasets": "datasets", "accelerate": "accelerate", "evaluate": "evaluate",
                 "scikit-learn": "sklearn"}
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


def requirement_names(text: str) -> set[str]:
    """The package names a requirements file lists (not its -r / --index options)."""
    names = set()
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower().replace("_", "-"))
    return names


def test_requirements_txt_is_the_serving_list_plus_training():
    from classifier.hub import space_requirements

    training = (ROOT / "requirements.txt").read_text()
    assert "-r requirements-space.txt" in training.splitlines()  # `pip install -r requirements.txt` gets both
    assert requirement_names(training) - {"tqdm"} == TRAINING_ONLY.keys()
    # CPU hardware gets PyTorch's CPU wheels, GPU hardware PyPI's CUDA build
    assert space_requirements("cpu-upgrade").startswith(f"--extra-index-url {CPU_TORCH_INDEX}\n")
    assert "--extra-index-url" not in space_requirements("t4-small")


# app.py with the packages named in argv[1] as good as not installed: the finder of installed packages does not
# find them, so an import fails and a probe (importlib.util.find_spec, as torch._dynamo does) answers None
SERVE_WITHOUT = """
import importlib.machinery, runpy, sys

blocked = set(sys.argv[1].split(","))


class NotInstalled(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        return None if name.split(".")[0] in blocked else super().find_spec(name, path, target)


sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = NotInstalled
sys.argv = ["app.py", *sys.argv[2:]]
runpy.run_path("app.py", run_name="__main__")
"""


def test_the_app_serves_without_the_training_packages(corpus_image):
    """What app.py imports, at start and in each endpoint, comes from the serving list: a Space installs no more."""
    from gradio_client import Client, handle_file

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_ID", "MODEL_REVISION")}
    env["HF_HUB_OFFLINE"] = "1"  # the bundled models only
    app = load_app.start_server(["-c", SERVE_WITHOUT, ",".join(TRAINING_ONLY.values()), "--host", "127.0.0.1",
                                 "--port", str(port)], port, env, timeout=300)
    url = f"http://127.0.0.1:{port}"
    try:
        with open(corpus_image, "rb") as f:
            assert httpx.post(f"{url}/api/classify", files={"file": f}).status_code == 200
        assert httpx.get(f"{url}/api/model_info").status_code == 200
        client = Client(url, verbose=False)
        heatmap, details = client.predict(handle_file(str(corpus_image)), None, None, api_name="/explain")
        assert Path(heatmap).is_file() and details["class"]
        table, _ = client.predict([handle_file(str(corpus_image))], 3, None, api_name="/classify_batch")
        assert len(table["data"]) == 1
    finally:
        app.terminate()
        app.wait(timeout=30)
    app.log.seek(0)
    log = app.log.read()
    assert not any(f"No module named '{name}" in log for name in TRAINING_ONLY.values()), log[-3000:]


def deploy(env: dict, model: str = "tester/blobs") -> subprocess.CompletedProcess:
    return python(env, "-m", "classifier.hub", "deploy-space", "tester/demo", "--model", model)


def test_deploy_space_names_the_step_that_failed_and_what_is_on_the_hub(hub, tmp_path):
    hub.add_files("model", "tester/blobs", {"config.json": b"{}"})
    env = hub_env(hub, tmp_path / "home")
    hub.failing["variables"] = 404  # a 404 that is not the Hub saying "no such repo"
    failed = deploy(env)
    assert failed.returncode == 3
    assert "step 3 of 3, setting the Space variable MODEL_ID=tester/blobs" in failed.stderr
    assert "the Hub answered 404" in failed.stderr and "on purpose" in failed.stderr  # the server's own words
    assert "the app's files, committed" in failed.stderr and f"{hub.url}/spaces/tester/demo/settings" in failed.stderr
    assert "no such repo" not in failed.stderr
    space = hub.repos[("space", "tester/demo")]
    assert "app.py" in space.files and space.variables == {}  # as the message says
    del hub.failing["variables"]
    again = deploy(env)  # every step may be repeated: running it again finishes the job
    assert again.returncode == 0, again.stderr[-3000:]
    assert space.variables == {"MODEL_ID": "tester/blobs"}
    # where the Hub does say so (X-Error-Code RepoNotFound), the message says so
    missing = deploy(env, "tester/gone")
    assert missing.returncode == 3
    assert "Looking up the model tester/gone failed: no such repo, or the token may not see it" in missing.stderr


def test_a_space_whose_model_id_cannot_be_loaded_says_the_variable_is_wrong(hub, tmp_path):
    hub.add_files("model", "tester/blobs", {"config.json": b"{}"})
    env = hub_env(hub, tmp_path / "home")
    assert deploy(env).returncode == 0
    space = tmp_path / "space"  # the Space's files, as its build checks them out: no bundled models
    for path, data in hub.repos[("space", "tester/demo")].files.items():
        (space / path).parent.mkdir(parents=True, exist_ok=True)
        (space / path).write_bytes(data)
    del env["PYTHONPATH"]
    env["MODEL_ID"] = "tester/gone"
    result = subprocess.run([sys.executable, "app.py", "--port", str(free_port())], cwd=space, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    message = result.stderr[result.stderr.index("error: "):]
    assert message.startswith("error: The MODEL_ID variable names a model that cannot be loaded ('tester/gone')")
    assert "Set MODEL_ID to a Hub model id" in message
    # one message, and no advice that does not apply to a Space
    assert result.stderr.count("MODEL_ID variable") == 1
    assert "--model" not in result.stderr and "instead" not in result.stderr
    assert "HTTP Request:" not in result.stderr
