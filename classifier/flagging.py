"""'Wrong? Tell us': visitors' corrections of predictions, collected for the Space's owner in a Hub dataset.

Off unless the owner names the dataset (app.py --flag-dataset, env FLAG_DATASET); nothing is stored without a visitor
pressing the button. A correction is the image as the app decoded it, saved as PNG (so no EXIF: no camera, no place,
no time of shooting), and one line of metadata.jsonl beside it. huggingface_hub's CommitScheduler commits the folder
to the dataset every few minutes and, from its exit hook, once more when the server exits normally (untested). The
layout is the one `datasets`' imagefolder reads, so `datasets.load_dataset("<owner>/<dataset>")` gives the images
with their columns.
"""
from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path

from huggingface_hub import CommitScheduler, HfApi
from PIL import Image

# the columns of metadata.jsonl besides file_name, in README's words: the class the visitor chose, the model asked,
# its answer and probability, and when (UTC)
FLAG_COLUMNS = ("label", "model", "predicted", "probability", "flagged_at")


class TooManyFlags(Exception):
    """More corrections in the last hour than the server takes (a public button must not fill a dataset unbounded)."""


class FlagStore:
    """A local folder of corrections that a CommitScheduler keeps committing to the dataset `repo_id` (created
    private if it does not exist, so visitors' images are not published before the owner decides)."""

    def __init__(self, repo_id: str, every_minutes: float = 5, per_hour: int = 600, hf_api: HfApi | None = None):
        self.folder = Path(tempfile.mkdtemp(prefix="classifier-flags-"))
        # each server process appends to a folder of its own: two replicas never write the same metadata.jsonl
        self.part = self.folder / uuid.uuid4().hex[:12]
        self.scheduler = CommitScheduler(repo_id=repo_id, repo_type="dataset", folder_path=self.folder,
                                         path_in_repo="data", every=every_minutes, private=True, hf_api=hf_api)
        self.repo_id, self.every_minutes, self.per_hour = self.scheduler.repo_id, every_minutes, per_hour
        self._times: deque = deque()
        self._times_lock = threading.Lock()

    def add(self, image: Image.Image, record: dict) -> str:
        """Stores one correction (`record` has FLAG_COLUMNS) for the next commit; -> the image's file name."""
        with self._times_lock:
            now = time.monotonic()
            while self._times and now - self._times[0] > 3600:
                self._times.popleft()
            if len(self._times) >= self.per_hour:
                raise TooManyFlags(f"This app has taken {self.per_hour} corrections in the last hour, its limit; "
                                   "try again later.")
            self._times.append(now)
        name = f"{uuid.uuid4().hex}.png"
        # the scheduler lists the folder under its lock: a commit never takes a half-written image or line
        with self.scheduler.lock:
            self.part.mkdir(parents=True, exist_ok=True)
            image.save(self.part / name)
            with (self.part / "metadata.jsonl").open("a") as f:
                f.write(json.dumps({"file_name": name, **{key: record[key] for key in FLAG_COLUMNS}}) + "\n")
        return name
