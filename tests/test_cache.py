"""The decoded-image cache: decoded in worker processes, written once, read memory-mapped (shared pages, no
private copy), and the `auto` data path's budget shared by the machine's processes."""
from __future__ import annotations

from pathlib import Path

import datasets
import pytest
import torch

from classifier.data import decode_split, memory_budget, streams


@pytest.fixture
def test_split(parquet_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("CLASSIFIER_CACHE", str(tmp_path / "cache"))
    split = datasets.load_dataset(str(parquet_repo))["test"]
    return dict(split=split, image_column="img", label_column="fine_label", num_classes=4, size=32)


def mapped_files() -> set[str]:
    return {line.split(maxsplit=5)[5].strip() for line in Path("/proc/self/maps").read_text().splitlines()
            if len(line.split(maxsplit=5)) == 6}


def test_cached_images_are_read_memory_mapped_from_one_file(test_split, tmp_path):
    private = decode_split(**test_split, use_cache=False)
    first = decode_split(**test_split)  # decodes and writes the cache
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 2 and cached[0].endswith(".meta.npz") and cached[1].endswith(".npy")
    again = decode_split(**test_split)  # reads it
    npy = str(tmp_path / "cache" / cached[1])
    assert npy in mapped_files()  # the pixels are the file's pages, not a copy in this process
    for split in (first, again):
        assert torch.equal(split.images, private.images) and torch.equal(split.labels, private.labels)
        assert torch.equal(split.rows, private.rows)
    assert again.images.is_contiguous(memory_format=torch.channels_last)


def test_decoding_in_worker_processes_gives_the_same_tensors(test_split, tmp_path, monkeypatch):
    """Every image is opened by one of two worker processes, none by this one, and the tensors are those this process
    decodes alone. (PIL's Image.open is spied on, still opening each image: each call writes the process's id.)"""
    import os

    from PIL import Image

    calls, image_open = tmp_path / "opened-by", Image.open

    def open_and_tell(*args, **kwargs):
        with open(calls, "a") as f:
            f.write(f"{os.getpid()}\n")
        return image_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", open_and_tell)

    def decoded_by(**options):
        calls.unlink(missing_ok=True)
        split = decode_split(**test_split, use_cache=False, **options)
        return split, calls.read_text().split()

    test_split["split"] = datasets.concatenate_datasets([test_split["split"]] * 5)  # 300 images: two chunks
    alone, here = decoded_by()
    parallel, there = decoded_by(workers=2)
    assert len(here) == len(there) == 300
    assert set(here) == {str(os.getpid())}
    assert len(set(there)) == 2 and str(os.getpid()) not in there  # two workers, a chunk each
    assert torch.equal(alone.images, parallel.images) and torch.equal(alone.rows, parallel.rows)


def test_auto_data_path_counts_every_process_of_the_machine():
    cpu = torch.device("cpu")
    assert memory_budget(cpu, 2) == memory_budget(cpu) // 2
    three_quarters = memory_budget(cpu) * 3 // 4
    assert not streams("auto", three_quarters, cpu, local_processes=1)
    assert streams("auto", three_quarters, cpu, local_processes=2)  # two copies would not fit
    assert not streams("memory", three_quarters, cpu, local_processes=2)
