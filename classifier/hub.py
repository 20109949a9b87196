"""The Hugging Face Hub: push a model folder, deploy the app as a Space.

    python -m classifier.hub push runs/cifar10 me/resnet18-cifar10 [--private] [--revision BRANCH]
    python -m classifier.hub deploy-space me/cifar10-demo --model me/resnet18-cifar10 [--model-revision REV]
        [--private] [--hardware cpu-basic] [--add-token-secret] [--flag-dataset DATASET_ID] [--dry-run]

The token comes from HF_TOKEN or `hf auth login`; HF_ENDPOINT points everything at another Hub.
"""
from __future__ import annotations

import argparse
import functools
import re
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# what a training folder holds that is not part of the model repo
NOT_UPLOADED = ["checkpoints/**", "logs/**", ".staging/**", ".write-test"]
# the Python that CI tests; Spaces otherwise default to 3.10, which nothing here tests
PYTHON_VERSION = "3.11"
SPACE_FILES = ["app.py", "classifier/**/*.py", "classifier/metrics/**/*.py"]
# what serving needs (the Space's requirements.txt is made from it); requirements.txt adds training's packages
SERVING_REQUIREMENTS = PROJECT_ROOT / "requirements-space.txt"
# PyTorch's CPU wheels for a CPU Space: PyPI's Linux torch is the CUDA build, with nvidia-* and triton several GB
# that a CPU never uses (docs/APP.md has the sizes). pip takes the CPU index's 2.x.y+cpu over PyPI's 2.x.y.
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"


class HubError(RuntimeError):
    """A Hub operation failed; the message says why in plain words (never with the token)."""


def names_local_path(spec: str) -> bool:
    """Whether a `--dataset` / `--model` value that is not on disk was meant as a local path rather than a Hub id
    ("name" or "owner/name"): it starts with . / ~, has more than one "/", or is "runs/x" where runs/ exists here."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or (
        spec.count("/") == 1 and Path(spec.split("/")[0]).is_dir())


@functools.lru_cache(maxsize=None)
def hub_unreachable() -> str | None:
    """Why the Hub (HF_ENDPOINT) cannot be reached, or None when it can or offline mode is on (the libraries then
    read their caches and say so themselves). One request without retries: huggingface_hub retries a failed
    connection five times with backoff, 23 s of warnings before each error or fallback."""
    from huggingface_hub import constants, is_offline_mode
    from huggingface_hub.utils import get_session

    if is_offline_mode():
        return None
    try:
        get_session().head(constants.ENDPOINT, timeout=5)
    except Exception as e:  # any transport failure (DNS, refused, timeout, proxy): any HTTP answer means reachable
        return type(e).__name__
    return None


def _explain(e: Exception, what: str) -> HubError:
    """`what` failed, in plain words, by what the Hub answered: huggingface_hub raises RepositoryNotFoundError only
    when the Hub said so (X-Error-Code RepoNotFound); any other 404 (no such revision or file, a route this Hub
    does not have) is not "no such repo", and the server's own message says more than its status."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalTokenNotFoundError,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)

    if isinstance(e, LocalTokenNotFoundError):  # an OSError: before the network's
        reason = "no token (set HF_TOKEN or run `hf auth login`)"
    elif isinstance(e, GatedRepoError):  # a subclass of RepositoryNotFoundError: first
        reason = "the repo is gated: accept its conditions on its page, with the account of the token"
    elif isinstance(e, RepositoryNotFoundError):  # the Hub answers the same for a repo the token may not see
        reason = "no such repo, or the token may not see it"
    elif isinstance(e, RevisionNotFoundError):
        reason = "no such revision (branch, tag or commit) in the repo"
    elif isinstance(e, RemoteEntryNotFoundError):
        reason = "no such file in the repo"
    elif isinstance(e, HfHubHTTPError):
        status = e.response.status_code if e.response is not None else None
        said = e.server_message or str(e).strip().splitlines()[0]
        if status == 401:
            reason = "the token was rejected (log in with `hf auth login` or set HF_TOKEN)"
        elif status == 403:
            reason = f"the token may not do this (the Hub answered 403: {said})"
        else:
            reason = f"the Hub answered {status}: {said}"
    elif isinstance(e, (OSError, ConnectionError)) or "connect" in type(e).__name__.lower():
        reason = f"cannot reach the Hub ({type(e).__name__})"
    else:
        reason = f"{type(e).__name__}: {e}"
    return HubError(f"{what} failed: {reason.rstrip('.')}.")


def check_push_access(repo_id: str, private: bool = False, token: str | None = None,
                      what: str | None = None) -> str:
    """Before training, not after it: the token is valid and may write to `repo_id`'s namespace, and the repo
    exists (created now if needed, as transformers' Trainer does at its start). -> the repo URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    what = what or f"Checking write access to {repo_id}"
    namespace = repo_id.split("/")[0] if "/" in repo_id else None
    try:
        me = api.whoami()
    except Exception as e:
        raise _explain(e, what) from None
    access = me.get("auth", {}).get("accessToken", {})
    writable = {me["name"], *(org["name"] for org in me.get("orgs", []) if org.get("roleInOrg") != "read")}
    if access.get("role") == "read":
        raise HubError(f"{what} failed: the token is read-only; create a write token.")
    if access.get("role") == "fineGrained":
        # a fine-grained token writes only where one of its scopes grants repo.write
        scopes = access.get("fineGrained", {}).get("scoped", [])
        writable = {s["entity"]["name"] for s in scopes if "repo.write" in s.get("permissions", [])}
        if repo_id in writable:
            writable.add(namespace or me["name"])
    if (namespace or me["name"]) not in writable:
        raise HubError(f"{what} failed: {me['name']} may not write to {namespace!r} (writable: "
                       f"{', '.join(sorted(writable)) or 'nothing'}).")
    try:
        return str(api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model"))
    except Exception as e:
        raise _explain(e, what) from None


def card_for_repo(folder: Path, repo_id: str) -> bytes | None:
    """A card written before its repo was known says `<your-user>/<name>` in its usage lines: the card naming the
    repo (None when there is nothing to change). The local folder keeps its own card."""
    card = folder / "README.md"
    if card.is_file() and "<your-user>/" in (text := card.read_text()):
        return re.sub(r"<your-user>/[\w.-]+", repo_id, text).encode()
    return None


def push_folder(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
                token: str | None = None, commit_message: str | None = None) -> str:
    """Create `repo_id` if needed and upload the model folder (no checkpoints or logs). Returns the repo URL."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise HubError(f"{folder} is not a complete model folder (config.json and model.safetensors are needed).")
    api = HfApi(token=token)
    url = check_push_access(repo_id, private=private, token=token, what=f"Push to {repo_id}")
    card = card_for_repo(folder, repo_id)
    try:
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        message = commit_message or f"Upload {folder.name} trained with image-classifier"
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision, commit_message=message,
                          ignore_patterns=NOT_UPLOADED + (["README.md"] if card else []))
        if card:
            api.upload_file(path_or_fileobj=card, path_in_repo="README.md", repo_id=repo_id, revision=revision,
                            commit_message=message)
    except Exception as e:
        raise _explain(e, f"Push to {repo_id}") from None
    print(f"Pushed {folder} to {url}")
    return str(url)


def space_readme(space_id: str, model_id: str, datasets: list[str], hardware: str) -> str:
    # the Space runs the Gradio that the serving requirements pin (an extra such as [mcp] or not)
    gradio_version = re.search(r"^gradio(?:\[[\w,]+\])?==([\w.]+)", SERVING_REQUIREMENTS.read_text(), re.M).group(1)
    lines = [
        "---", f"title: {space_id.split('/')[-1]}", "emoji: 🖼️", "colorFrom: indigo", "colorTo: blue",
        "sdk: gradio", f"sdk_version: {gradio_version}", "app_file: app.py",
        f'python_version: "{PYTHON_VERSION}"', "license: apache-2.0",
        "short_description: Image classifier (timm) with top-k, galleries, batch",
        f"models:\n- {model_id}", *(["datasets:\n" + "\n".join(f"- {d}" for d in datasets)] if datasets else []),
        "tags:\n- image-classification\n- timm", f"suggested_hardware: {hardware}", "---", "",
        f"# {space_id.split('/')[-1]}", "",
        f"Serves [{model_id}](https://huggingface.co/{model_id}) (set by the Space variable `MODEL_ID`).",
        "Every action is also an API endpoint: see *Use via API* at the bottom of the app.", "",
    ]
    return "\n".join(lines)


def space_requirements(hardware: str) -> str:
    """The Space's requirements.txt: the serving list, with PyTorch's CPU index on CPU hardware (cpu-basic,
    cpu-upgrade, ...); GPU hardware keeps PyPI's CUDA torch."""
    index = f"--extra-index-url {CPU_TORCH_INDEX}\n" if hardware.startswith("cpu") else ""
    return index + SERVING_REQUIREMENTS.read_text()


def space_files() -> list[Path]:
    files = {p for pattern in SPACE_FILES for p in PROJECT_ROOT.glob(pattern) if "__pycache__" not in p.parts}
    return sorted(p.relative_to(PROJECT_ROOT) for p in files)


def model_datasets(model_id: str, revision: str | None, token: str | None) -> list[str]:
    """The Hub datasets named in the model card, so the Space card can link them."""
    from huggingface_hub import ModelCard

    try:
        return list(ModelCard.load(model_id, token=token).data.datasets or [])
    except Exception:
        return []


def deploy_space(space_id: str, model_id: str, model_revision: str | None = None, private: bool = False,
                 hardware: str = "cpu-basic", add_token_secret: bool = False, dry_run: bool = False,
                 token: str | None = None, flag_dataset: str | None = None) -> dict:
    """Create or update a Gradio Space that serves `model_id`. Returns what was (or would be) done.

    The steps run in order and nothing is undone when one fails, so its error names the step, what the earlier
    ones left on the Hub and what is not done. Every step is safe to repeat: running the command again finishes."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    # before the dry run's answer too: a Space can serve only a Hub model, never a folder of this machine
    for what, repo_id in (("The Space id", space_id), ("--model", model_id), ("--flag-dataset", flag_dataset)):
        try:
            if repo_id is not None:
                validate_repo_id(repo_id)
        except HFValidationError:
            raise HubError(f"{what} {repo_id!r} is not a Hub repo id (owner/name).") from None
    variables = {"MODEL_ID": model_id, **({"MODEL_REVISION": model_revision} if model_revision else {}),
                 **({"FLAG_DATASET": flag_dataset} if flag_dataset else {})}
    files = [str(p) for p in space_files()] + ["requirements.txt", "README.md"]
    plan = {"space": space_id, "files": files, "variables": variables, "hardware": hardware, "private": private,
            "secrets": ["HF_TOKEN"] if add_token_secret else []}
    if dry_run:
        return plan
    secret = (token or get_token()) if add_token_secret else None
    if add_token_secret and not secret:  # before any step, not after the files are up
        raise HubError("--add-token-secret: no token found (set HF_TOKEN or run `hf auth login`).")
    api = HfApi(token=token)
    try:
        model_private = api.model_info(model_id, revision=model_revision).private
    except Exception as e:
        raise _explain(e, f"Looking up the model {model_id}") from None
    if model_private and not add_token_secret:
        print(f"Note: {model_id} is private; the Space needs an HF_TOKEN secret to download it. "
              "Add it on the Space's settings page, or run again with --add-token-secret.", file=sys.stderr)
    if flag_dataset and not add_token_secret:  # the app stops at start when it cannot create or reach the dataset
        print(f"Note: the Space keeps corrections in {flag_dataset}, so it needs an HF_TOKEN secret that may write "
              "there. Add it on the Space's settings page, or run again with --add-token-secret.", file=sys.stderr)
    readme = space_readme(space_id, model_id, model_datasets(model_id, model_revision, token), hardware)
    operations = [CommitOperationAdd(str(path), str(PROJECT_ROOT / path)) for path in space_files()]
    operations += [CommitOperationAdd("requirements.txt", space_requirements(hardware).encode()),
                   CommitOperationAdd("README.md", readme.encode())]
    url = f"{api.endpoint}/spaces/{space_id}"
    # (what the step does, what it leaves on the Hub, the call)
    steps = [
        ("creating the Space", f"the Space {url}", functools.partial(
            api.create_repo, space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)),
        ("committing the app's files", "the app's files, committed", functools.partial(
            api.create_commit, space_id, operations, repo_type="space",
            commit_message=f"Deploy the app for {model_id}")),
        *[(f"setting the Space variable {key}={value}", f"the variable {key}",
           functools.partial(api.add_space_variable, space_id, key, value)) for key, value in variables.items()],
    ]
    if secret:
        steps.append(("storing the Space secret HF_TOKEN", "the secret HF_TOKEN",
                      functools.partial(api.add_space_secret, space_id, "HF_TOKEN", secret)))
    if hardware != "cpu-basic":
        steps.append((f"requesting the hardware {hardware}", f"the hardware {hardware}",
                      functools.partial(api.request_space_hardware, space_id, hardware)))
    for i, (doing, _, call) in enumerate(steps):
        try:
            call()
        except Exception as e:
            error = _explain(e, f"Deploying {space_id}: step {i + 1} of {len(steps)}, {doing},")
            done = "; ".join(step[1] for step in steps[:i]) or "nothing from this run"
            left = "; ".join(step[0] for step in steps[i:])
            # past the commit, what is left are the Space's settings, which its settings page also sets
            finish = (f"set them on {url}/settings, or run deploy-space again" if i >= 2 else
                      "run deploy-space again once the cause is fixed")
            raise HubError(f"{error} Already on the Hub: {done}. Not done: {left}: {finish} (every step is safe "
                           "to repeat).") from None
    print(f"Deployed {url} serving {model_id}")
    return plan


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m classifier.hub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    push = commands.add_parser("push", help="upload a model folder (without checkpoints and logs)")
    push.add_argument("folder")
    push.add_argument("repo_id")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", help="branch to push to (created if needed)")
    space = commands.add_parser("deploy-space", help="create or update a Gradio Space serving a Hub model")
    space.add_argument("space_id")
    space.add_argument("--model", required=True, help="Hub model id the Space serves (Space variable MODEL_ID)")
    space.add_argument("--model-revision", help="pin the model revision (Space variable MODEL_REVISION)")
    space.add_argument("--private", action="store_true")
    space.add_argument("--hardware", default="cpu-basic", help="Space hardware flavour")
    space.add_argument("--add-token-secret", action="store_true",
                       help="store your token as the Space secret HF_TOKEN (needed for a private model)")
    space.add_argument("--flag-dataset", metavar="DATASET_ID",
                       help="collect visitors' corrections in this Hub dataset (Space variable FLAG_DATASET; "
                            "the Space's HF_TOKEN must be able to write it; default: off)")
    space.add_argument("--dry-run", action="store_true", help="list files and settings, upload nothing")
    args = parser.parse_args(argv)
    try:
        if args.command == "push":
            push_folder(args.folder, args.repo_id, private=args.private, revision=args.revision)
        else:
            plan = deploy_space(args.space_id, args.model, args.model_revision, args.private, args.hardware,
                                args.add_token_secret, args.dry_run, flag_dataset=args.flag_dataset)
            if args.dry_run:
                print(f"Would create/update the Space {plan['space']} (private={plan['private']}, "
                      f"hardware={plan['hardware']}) with:")
                for f in plan["files"]:
                    print(f"  {f}")
                for key, value in plan["variables"].items():
                    print(f"  variable {key}={value}")
                for key in plan["secrets"]:
                    print(f"  secret {key}")
    except HubError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
