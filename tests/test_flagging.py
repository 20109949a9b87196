"""'Wrong? Tell us' (classifier/flagging.py): a visitor's correction reaches the owner's Hub dataset (the loopback
stand-in here) only when sent, in the layout `datasets` loads, without the photo's metadata; off unless the owner
names a dataset; bounded per hour."""
from __future__ import annotations

import io
import json
import random
import time

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from benchmarks import load_app

from .helpers import CLASSES, free_port, shape_image
from .hub_standin import HubStandIn
from .test_hub import hub_env

pytestmark = pytest.mark.slow  # the Hub stand-in and an app in a subprocess


def photo_with_gps(path) -> Image.Image:
    """A JPEG with EXIF (a camera model and a GPS position), as phones write them; -> the image's pixels."""
    image = shape_image("blue", random.Random(3), size=48)
    exif = Image.Exif()
    exif[0x0110] = "Phone 9"  # Model
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 24.0)}  # GPSInfo: latitude
    image.save(path, exif=exif, quality=95)
    assert Image.open(path).getexif()[0x0110] == "Phone 9"
    return Image.open(path).convert("RGB")


def data_files(hub: HubStandIn, repo: str) -> dict[str, bytes]:
    return {path: data for path, data in hub.repos[("dataset", repo)].files.items() if path.startswith("data/")}


def test_a_correction_reaches_the_owners_dataset_only_when_sent(hub, trained, tmp_path):
    env = hub_env(hub, tmp_path / "home")
    env.update(FLAG_DATASET="tester/flags", FLAG_EVERY_MINUTES="0.02")  # a commit every 1.2 s
    port = free_port()
    app = load_app.start_app(str(trained), port, env)
    try:
        url = f"http://127.0.0.1:{port}/"
        client = Client(url, verbose=False)
        image_path = tmp_path / "phone.jpg"
        pixels = photo_with_gps(image_path)
        _, _, details = client.predict(handle_file(str(image_path)), 3, api_name="/predict")
        time.sleep(3)  # two commit periods and more
        assert hub.repos[("dataset", "tester/flags")].private  # created private: visitors' images are not published
        assert data_files(hub, "tester/flags") == {}  # classifying stores nothing

        with pytest.raises(Exception, match="Choose the right class among model's: red, green, blue, yellow"):
            client.predict(handle_file(str(image_path)), "purple", api_name="/flag")
        said = client.predict(handle_file(str(image_path)), "blue", api_name="/flag")
        assert said.startswith("Thank you: **blue** is stored") and "`tester/flags` within 0.02 minutes" in said
        assert f"({details['model']} said {details['predictions'][0]['label']}, " in said  # named: it may land late

        deadline = time.time() + 30
        while not any(p.endswith("metadata.jsonl") for p in data_files(hub, "tester/flags")):
            assert time.time() < deadline, "the correction was not committed within 30 s"
            time.sleep(0.3)
        files = data_files(hub, "tester/flags")
        [metadata] = [p for p in files if p.endswith("metadata.jsonl")]
        [record] = [json.loads(line) for line in files[metadata].decode().splitlines()]
        assert set(record) == {"file_name", "label", "model", "predicted", "probability", "flagged_at"}
        top = details["predictions"][0]
        assert (record["label"], record["model"], record["predicted"]) == ("blue", details["model"], top["label"])
        assert record["probability"] == pytest.approx(top["probability"], abs=1e-3)
        stored = Image.open(io.BytesIO(files[metadata.rsplit("/", 1)[0] + "/" + record["file_name"]]))
        assert stored.format == "PNG" and not stored.getexif() and "exif" not in stored.info  # no camera, no place
        assert stored.convert("RGB").tobytes() == pixels.tobytes()

        # the dataset as the owner loads it: `datasets` reads the layout with its columns
        import datasets

        local = tmp_path / "flags"
        for path, data in files.items():
            (local / path).parent.mkdir(parents=True, exist_ok=True)
            (local / path).write_bytes(data)
        rows = datasets.load_dataset(str(local), split="train")
        assert rows.num_rows == 1 and rows[0]["label"] == "blue" and rows[0]["image"].size == pixels.size
        stats = client.predict(api_name="/stats")["endpoints"]["flag"]
        assert (stats["requests"], stats["errors"]) == (2, 1)

        # many visitors at once, while commits go on every 1.2 s: each correction is stored once, whole, with its
        # own image (told apart by their pixels)
        sent = {}
        for i in range(8):
            path = tmp_path / f"visitor-{i}.png"
            image = shape_image(CLASSES[i % 4], random.Random(100 + i), size=40)
            image.save(path)
            sent[image.tobytes()] = CLASSES[(i + 1) % 4]  # a class other than the blob's: a correction
        jobs = [Client(url, verbose=False).submit(handle_file(str(tmp_path / f"visitor-{i}.png")), label,
                                                  api_name="/flag") for i, label in enumerate(sent.values())]
        assert all(job.result(timeout=120).startswith("Thank you") for job in jobs)
        deadline = time.time() + 30
        while len(records := [json.loads(line) for line in data_files(hub, "tester/flags")[metadata].decode()
                              .splitlines()]) < 9:
            assert time.time() < deadline, f"{len(records)} of 9 corrections committed within 30 s"
            time.sleep(0.3)
        files = data_files(hub, "tester/flags")
        assert len(records) == 9 and len({r["file_name"] for r in records}) == 9
        assert sum(p.endswith(".png") for p in files) == 9
        stored = {Image.open(io.BytesIO(files[metadata.rsplit("/", 1)[0] + "/" + r["file_name"]])).convert("RGB")
                  .tobytes(): r["label"] for r in records[1:]}
        assert stored == sent
    finally:
        app.kill()


def test_without_a_dataset_named_nothing_is_collected(server, corpus_image):
    client = Client(server[0], verbose=False)
    with pytest.raises(Exception, match="This app does not collect corrections: its owner has not named a dataset"):
        client.predict(handle_file(str(corpus_image)), "red", api_name="/flag")


def test_an_app_told_to_collect_where_it_cannot_does_not_start(trained):
    """Serving without a place for the corrections the owner asked for would lose every one of them."""
    from .helpers import create_served_app

    with pytest.raises(SystemExit, match="cannot keep corrections in the dataset 'tester/flags'"):
        create_served_app(trained, "--flag-dataset", "tester/flags")  # the session is offline


def test_corrections_are_bounded_per_hour(hub, monkeypatch):
    from huggingface_hub import HfApi, constants

    from classifier.flagging import FlagStore, TooManyFlags

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the session is offline; this Hub is the stand-in

    store = FlagStore("tester/bounded", every_minutes=60, per_hour=2, hf_api=HfApi(endpoint=hub.url, token=hub.token))
    record = {"label": "red", "model": "m", "predicted": "blue", "probability": 0.5, "flagged_at": "now"}
    for _ in range(2):
        store.add(Image.new("RGB", (8, 8)), record)
    with pytest.raises(TooManyFlags, match="taken 2 corrections in the last hour"):
        store.add(Image.new("RGB", (8, 8)), record)
    store.scheduler.trigger().result()
    files = data_files(hub, "tester/bounded")
    assert sum(p.endswith(".png") for p in files) == 2
    store.scheduler.stop()
