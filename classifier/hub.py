"""Uploading a model folder to the Hugging Face Hub."""
from __future__ import annotations

from pathlib import Path

# what a training folder holds that is not part of the model repo
NOT_UPLOADED = ["checkpoints/**", "logs/**", ".staging/**", ".write-test"]


class HubError(RuntimeError):
    """A Hub operation failed; the message says why in plain words (never with the token)."""


def push_folder(folder: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
                token: str | None = None, commit_message: str | None = None) -> str:
    """Create `repo_id` if needed and upload the model folder (no checkpoints or logs). Returns the repo URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise HubError(f"{folder} is not a complete model folder (config.json and model.safetensors are needed).")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), revision=revision, ignore_patterns=NOT_UPLOADED,
            commit_message=commit_message or f"Upload {folder.name} trained with image-classifier",
        )
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        reason = {401: "the token was rejected (log in with `hf auth login` or set HF_TOKEN)",
                  403: "the token may not write to this repo"}.get(status, str(e).splitlines()[0])
        raise HubError(f"Push to {repo_id} failed: {reason}.") from None
    except Exception as e:  # no network, DNS, TLS...
        raise HubError(f"Push to {repo_id} failed: cannot reach the Hub ({type(e).__name__}).") from None
    print(f"Pushed {folder} to {url}")
    return str(url)
