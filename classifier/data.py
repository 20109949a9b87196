"""Loading image-classification datasets with `datasets`, and decoding them once into uint8 tensors.

`load_splits` resolves what the user typed (`cifar10`, a Hub id, a Hub-layout folder, an image
folder, Kaggle's `seg_train/seg_test` layout), finds the image and label columns from the
features and returns train/validation/test. `decode_split` turns one split into a uint8 tensor
(N, 3, H, W) using the PIL stage of timm's eval transform, decoded in DataLoader workers and cached on
disk by dataset fingerprint as a memory-mapped `.npy`, so each image is decoded once per machine instead
of once per epoch, and the processes of a machine share one copy of the pixels (the page cache's). A training set too large for
that is read through `StreamedSplit` instead: the same decoding per batch, in DataLoader workers.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import datasets
import numpy as np
import timm.data
import torch
from tqdm.auto import tqdm

from .hub import hub_unreachable, names_local_path
from .images import BadImageError, open_rgb
from .presets import PRESETS

SPLIT_NAMES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing"),
}
CACHE_VERSION = "3"  # 3: images in a memory-mapped .npy, the rest in a small .npz


class DataError(ValueError):
    """The dataset cannot be used as given; the message says what to change."""


def undecodable(desc: str, message: str) -> DataError:
    return DataError(f"{desc}: {message} Fix or remove it, or pass --skip-bad-images.")


@dataclass
class Splits:
    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset | None
    image_column: str
    label_column: str
    label_names: list[str]
    validation_carved: bool  # True when validation was split off train


def _split_of(name: str) -> str | None:
    tokens = set(re.split(r"[^a-z0-9]+", name.lower()))
    return next((split for split, aliases in SPLIT_NAMES.items() if tokens & set(aliases)), None)


def check_local_path(spec: str) -> None:
    """A `spec` that names a local path which is not a folder fails here: a run checks it before anything else
    (fetching weights, choosing a recipe), so that this error is the first thing it says."""
    folder = Path(spec).expanduser()
    if spec in PRESETS or folder.is_dir():
        return
    if folder.exists():
        raise DataError(f"{spec!r} is a file; --dataset takes a folder, a preset or a Hub dataset id.")
    if names_local_path(spec):
        raise DataError(f"{spec}: no such folder (from {Path.cwd()}); --dataset takes a folder, a preset "
                        f"({', '.join(PRESETS)}) or a Hub dataset id.")


def load_dataset_dict(spec: str) -> datasets.DatasetDict:
    """`spec` is a preset name, a local folder or a Hub dataset id."""
    try:
        check_local_path(spec)
        if spec in PRESETS:
            preset = PRESETS[spec]
            require_hub(spec, preset.path)
            return datasets.load_dataset(preset.path, data_files=preset.data_files)
        folder = Path(spec).expanduser()
        if folder.is_dir():
            split_dirs = {}
            for child in sorted(folder.iterdir()):
                if child.is_dir() and (split := _split_of(child.name)) and split not in split_dirs:
                    split_dirs[split] = child.name
            has_repo_files = any(folder.glob("*.md")) or any(folder.glob("**/*.parquet"))
            if split_dirs and not has_repo_files and "train" in split_dirs:
                # e.g. Kaggle's seg_train/seg_test: imagefolder only maps exact split names itself
                files = {split: f"{name}/**" for split, name in split_dirs.items()}
                return datasets.load_dataset("imagefolder", data_dir=str(folder), data_files=files)
            return datasets.load_dataset(str(folder))
        require_hub(spec, spec)
        return datasets.load_dataset(spec)
    except DataError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ConnectionError...)
        if spec in PRESETS:  # offline mode without a cached copy, or a Hub error
            raise DataError(f"Cannot load the preset {spec!r} ({PRESETS[spec].path}: {type(e).__name__}: {e}); "
                            f"{local_copy_hint(PRESETS[spec].path)}.") from e
        hint = f"presets: {', '.join(PRESETS)}; or a local folder; or a Hub dataset id"
        raise DataError(f"Cannot load dataset {spec!r} ({type(e).__name__}: {e}). Expected one of {hint}.") from e


def local_copy_hint(hub_id: str) -> str:
    """Where a copy of a preset's dataset lies on this project's machines (docs/TRAINING.md's local copies), where
    that folder exists from here; else a placeholder, so the hint never names a path that is not there."""
    shared = f"../shared/data/{hub_id.split('/')[-1]}"
    folder = shared if hub_id in {p.path for p in PRESETS.values()} and Path(shared).is_dir() else "<a folder>"
    return f"use a local folder: --dataset {folder} (a copy laid out like {hub_id})"


def require_hub(spec: str, hub_id: str) -> None:
    """Fail at once, in one line, when the Hub cannot be reached, instead of after the retries."""
    why = hub_unreachable()
    if why:
        raise DataError(f"cannot reach the Hub ({why}) to load {spec!r}; {local_copy_hint(hub_id)}.")


def _find_column(features: datasets.Features, kind: type, override: str | None, role: str, flag: str) -> str:
    if override:
        if override not in features:
            raise DataError(f"{flag} {override!r} is not a column; columns are {list(features)}.")
        return override
    matches = [name for name, feature in features.items() if isinstance(feature, kind)]
    if role == "label" and not matches:
        matches = [n for n in ("label", "labels", "class", "target") if n in features]
    if not matches:
        # images alone: what datasets' imagefolder makes of a folder without class folders, or with only one
        folders = (" A folder of images needs a folder per class, at least two: photos/cat/1.jpg, photos/dog/2.jpg."
                   if role == "label" and all(isinstance(f, datasets.Image) for f in features.values()) else "")
        raise DataError(f"No {role} column found among {dict(features)}; name it with {flag}.{folders}")
    return matches[0]


def _with_class_labels(dataset: datasets.DatasetDict, label_column: str) -> datasets.DatasetDict:
    feature = next(iter(dataset.values())).features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return dataset
    if isinstance(feature, datasets.Value) and feature.dtype == "string":
        return dataset.class_encode_column(label_column)
    if isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint")):
        top = max(max(split[label_column]) for split in dataset.values() if len(split))
        names = [str(i) for i in range(top + 1)]
        return dataset.cast_column(label_column, datasets.ClassLabel(names=names))
    raise DataError(f"Label column {label_column!r} has type {feature}; expected class labels, integers or strings.")


def _first_split(dataset: datasets.DatasetDict, role: str) -> str | None:
    return next((name for name in dataset if _split_of(name) == role or name == role), None)


@dataclass
class Labelled:
    """A dataset's splits by name, each with class labels in `label_column` (checked: every label names a class)."""
    splits: datasets.DatasetDict
    image_column: str
    label_column: str
    label_names: list[str]

    def split_for(self, role: str) -> str | None:
        """The name of the split that plays `role` (train, validation, test: "seg_test" plays test), else of the
        dataset's only split (a folder of class folders is one, which datasets calls train), else None."""
        return _first_split(self.splits, role) or (next(iter(self.splits)) if len(self.splits) == 1 else None)


def load_labelled(spec: str, image_column: str | None = None, label_column: str | None = None) -> Labelled:
    """`spec` loaded (a preset, a local folder or a Hub dataset id), its columns found and its labels checked."""
    dataset = load_dataset_dict(spec)
    if isinstance(dataset, datasets.Dataset):
        dataset = datasets.DatasetDict(train=dataset)
    reference = _first_split(dataset, "train") or next(iter(dataset))  # the splits share their features
    features = dataset[reference].features
    image_column = _find_column(features, datasets.Image, image_column, "image", "--image-column")
    label_column = _find_column(features, datasets.ClassLabel, label_column, "label", "--label-column")
    dataset = _with_class_labels(dataset, label_column)
    label_names = list(dataset[reference].features[label_column].names)

    for name, split in dataset.items():
        labels = np.asarray(split.with_format("numpy")[label_column]) if len(split) else np.zeros(0)
        bad = np.flatnonzero((labels < 0) | (labels >= len(label_names)))
        if len(bad):
            rows = ", ".join(f"row {r} has label {labels[r]}" for r in bad[:5])
            raise DataError(f"Split {name!r}: {len(bad)} label(s) outside 0..{len(label_names) - 1} (-1 marks a "
                            f"missing label): {rows}{' ...' if len(bad) > 5 else ''}.")
    return Labelled(dataset, image_column, label_column, label_names)


def load_splits(
    spec: str,
    image_column: str | None = None,
    label_column: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> Splits:
    """The training, validation (carved from training when the dataset has none) and test (if any) splits."""
    labelled = load_labelled(spec, image_column, label_column)
    dataset, image_column, label_column = labelled.splits, labelled.image_column, labelled.label_column
    label_names = labelled.label_names
    train_name = labelled.split_for("train")
    if train_name is None:
        raise DataError(f"No training split in {spec!r}; splits are {list(dataset)}.")

    train = dataset[train_name]
    if len(train) == 0:
        raise DataError(f"The training split {train_name!r} of {spec!r} is empty.")
    val_name, test_name = _first_split(dataset, "validation"), _first_split(dataset, "test")
    carved = val_name is None
    if carved:
        try:
            parts = train.train_test_split(test_size=val_fraction, stratify_by_column=label_column, seed=seed)
        except ValueError as e:
            raise DataError(
                f"Cannot carve a stratified {val_fraction:.0%} validation split from {len(train)} training images "
                f"({e}). Use more data, a larger --val-fraction, or a dataset with a validation split."
            ) from e
        train, validation = parts["train"], parts["test"]
    else:
        validation = dataset[val_name]
    test = dataset[test_name] if test_name else None
    for name, split in (("validation", validation), ("test", test)):
        if split is not None and len(split) == 0:
            raise DataError(f"The {name} split of {spec!r} is empty.")

    def subset(split, n):
        return split if n is None or split is None or n >= len(split) else split.shuffle(seed=seed).select(range(n))

    return Splits(
        train=subset(train, max_train_samples),
        validation=subset(validation, max_eval_samples),
        test=subset(test, max_eval_samples),
        image_column=image_column,
        label_column=label_column,
        label_names=label_names,
        validation_carved=carved,
    )


def pil_stage(size: int, interpolation: str = "bilinear", crop_pct: float = 1.0):
    """timm's eval transform up to (not including) ToTensor/Normalize: resize + centre crop on PIL images.

    Using timm's own transform here is what lets `timm.data.create_transform(**resolve_data_config(...))`
    reproduce our evaluation preprocessing exactly; we then do ToTensor/Normalize on the device.
    """
    transform = timm.data.create_transform(
        input_size=(3, size, size), interpolation=interpolation, crop_pct=crop_pct, is_training=False
    )
    steps = []
    for step in transform.transforms:
        if type(step).__name__ in ("MaybeToTensor", "ToTensor", "Normalize"):
            break
        steps.append(step)

    def apply(image):
        for step in steps:
            image = step(image)
        return image

    return apply


def local_copy_note(spec: str, split_name: str, split: datasets.Dataset, image_column: str) -> str:
    """For the model card: that `split_name` came from a local folder, and how its images are stored (a JPEG
    re-encoding of a dataset changes its pixels, so figures may differ from the Hub copy's). "" for the Hub."""
    folder = Path(spec).expanduser()
    if not folder.is_dir():
        return ""
    preset = next((p for p in PRESETS.values() if p.path.split("/")[-1] == folder.resolve().name), None)
    first = split.cast_column(image_column, datasets.Image(decode=False))[0][image_column]
    try:
        from PIL import Image

        with Image.open(io.BytesIO(first["bytes"]) if first["bytes"] else first["path"]) as image:
            stored = image.format or "unknown"
    except OSError:
        stored = "unknown"
    copy = f", a copy laid out like the Hub's `{preset.path}`" if preset else ""
    reencoded = (" (where the original is stored otherwise, a JPEG copy is a re-encoding with pixels of its own, and "
                 "figures on the original may differ a little)") if stored == "JPEG" else ""
    return (f"The {split_name} split is a local copy: read from the folder `{folder.resolve().name}`{copy}, not from "
            f"the Hub, its images stored as {stored} files{reencoded}.")


def typical_size(split: datasets.Dataset, image_column: str, sample: int = 32) -> int:
    """Median shorter side of a few images: the resolution worth caching training images at."""
    rows = split.select(range(min(sample, len(split))))
    sides = []
    for row in rows.cast_column(image_column, datasets.Image(decode=False))[image_column]:
        try:
            sides.append(min(open_rgb(row["bytes"] or row["path"]).size))
        except BadImageError:
            continue
    return int(np.median(sides)) if sides else 0


@dataclass
class TensorSplit:
    images: torch.Tensor  # uint8 (N, 3, H, W), channels_last memory
    labels: torch.Tensor  # int64 (N,)
    rows: torch.Tensor  # int64 (N,): each image's row in the source split (skipped rows leave gaps)
    skipped: int = 0
    source: str = "decoded"  # or "cache": read from a cache another process (or an earlier run) wrote

    def __len__(self):
        return len(self.labels)


def cache_root() -> Path:
    return Path(os.environ.get("CLASSIFIER_CACHE", Path.home() / ".cache" / "image-classifier"))


def decode_split(
    split: datasets.Dataset,
    image_column: str,
    label_column: str,
    num_classes: int,
    size: int,
    interpolation: str = "bilinear",
    crop_pct: float = 1.0,
    skip_bad_images: bool = False,
    desc: str = "decode",
    use_cache: bool = True,
    workers: int = 0,
    progress: bool = True,
) -> TensorSplit:
    """The split as uint8 tensors, from the cache when it holds it. Cached images come back memory-mapped
    (copy-on-write, never written): every process reading the cache shares the same pages of RAM."""
    key = hashlib.sha1(
        repr((CACHE_VERSION, split._fingerprint, image_column, label_column, size, interpolation, crop_pct,
              skip_bad_images)).encode()
    ).hexdigest()[:20]
    images_path, meta_path = cache_root() / f"{key}.npy", cache_root() / f"{key}.meta.npz"
    if use_cache and meta_path.exists() and images_path.exists():
        return replace(_read_cache(images_path, meta_path), source="cache")

    stream = StreamedSplit(split, image_column, label_column, num_classes, size, interpolation, crop_pct)
    shape = (len(stream), size, size, 3)
    if use_cache:
        images_path.parent.mkdir(parents=True, exist_ok=True)
        # decoded straight into the file: even the decoding process keeps no private copy of the set
        tmp_images = images_path.with_suffix(f".{os.getpid()}.tmp.npy")
        images = np.lib.format.open_memmap(tmp_images, mode="w+", dtype=np.uint8, shape=shape)
    else:
        images = np.empty(shape, dtype=np.uint8)
    labels = np.empty(len(stream), dtype=np.int64)
    rows = np.empty(len(stream), dtype=np.int64)
    try:
        kept = _decode_into(images, labels, rows, stream, skip_bad_images, desc, workers, progress)
    except BaseException:
        if use_cache:
            tmp_images.unlink(missing_ok=True)
        raise
    skipped = len(stream) - kept
    labels, rows = labels[:kept], rows[:kept]
    if not use_cache:
        return _as_tensors(images[:kept], labels, rows, skipped)
    images.flush()
    del images
    os.replace(tmp_images, images_path)
    # the small file last, and atomically: a cache whose .meta.npz exists is complete, so concurrent processes
    # never read a half-written one (skipped images leave unused rows at the end of the .npy)
    tmp_meta = meta_path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp_meta, labels=labels, rows=rows, skipped=skipped)
    os.replace(tmp_meta, meta_path)
    return _read_cache(images_path, meta_path)


def _decode_into(images: np.ndarray, labels: np.ndarray, rows: np.ndarray, stream: StreamedSplit,
                 skip_bad_images: bool, desc: str, workers: int, progress: bool = True) -> int:
    """Fill the arrays with the decodable images in split order; -> how many there are."""
    kept = 0
    chunks = [list(range(start, min(start + 256, len(stream)))) for start in range(0, len(stream), 256)]
    # decoding is CPU-bound PIL work: spread it over worker processes (a one-chunk split is not worth one)
    loader = torch.utils.data.DataLoader(stream, batch_sampler=chunks, collate_fn=_as_decoded,
                                         num_workers=min(workers, len(chunks)) if len(chunks) > 1 else 0,
                                         # its own generator: decoding (or not, from the cache) leaves the
                                         # global RNG, which initialises the model, where it was
                                         generator=torch.Generator().manual_seed(0))
    with tqdm(total=len(stream), desc=desc, unit="img", disable=not progress) as bar:
        for batch_images, batch_labels, batch_rows, failed in loader:
            if failed and not skip_bad_images:
                raise undecodable(desc, failed[0])
            n = len(batch_labels)
            images[kept:kept + n] = batch_images.permute(0, 2, 3, 1).numpy()
            labels[kept:kept + n], rows[kept:kept + n] = batch_labels.numpy(), batch_rows.numpy()
            kept += n
            bar.update(len(batch_rows) + len(failed))
    if kept == 0:
        raise DataError(f"{desc}: none of the {len(stream)} images could be used.")
    return kept


def _as_decoded(batch):
    return batch  # StreamedSplit.__getitems__ returns whole decoded batches


def _read_cache(images_path: Path, meta_path: Path) -> TensorSplit:
    with np.load(meta_path, allow_pickle=False) as meta:
        labels, rows, skipped = meta["labels"], meta["rows"], int(meta["skipped"])
    # "c" (copy-on-write) rather than "r": torch wants a writable array, and no write ever reaches the file
    images = np.load(images_path, mmap_mode="c")[:len(labels)]
    return _as_tensors(images, labels, rows, skipped)


class StreamedSplit(torch.utils.data.Dataset):
    """A split decoded batch by batch (in DataLoader workers) for training sets too large to keep decoded.

    Each image goes through exactly the steps `decode_split` applies, so a batch is bit-identical to the
    same rows of the in-memory tensor and a run gives the same weights on either path.
    """

    def __init__(self, split: datasets.Dataset, image_column: str, label_column: str, num_classes: int, size: int,
                 interpolation: str = "bilinear", crop_pct: float = 1.0):
        self.raw = split.cast_column(image_column, datasets.Image(decode=False)).select_columns(
            [image_column, label_column])
        self.image_column, self.label_column = image_column, label_column
        self.num_classes = num_classes
        self.transform = pil_stage(size, interpolation, crop_pct)

    def __len__(self):
        return len(self.raw)

    def __getitems__(self, rows: list[int]):
        """-> uint8 images (b, 3, H, W) in channels_last memory, their labels and rows, and a message for each
        row that could not be used. Failures come back as messages, not exceptions, so the training process
        reports them without a worker's traceback, or skips them."""
        batch = self.raw[rows]
        images, labels, kept, failed = [], [], [], []
        for row, item, label in zip(rows, batch[self.image_column], batch[self.label_column]):
            where = f"row {row}" + (f" ({item['path']})" if item.get("path") else "")
            try:
                if label is None or not 0 <= label < self.num_classes:
                    raise BadImageError(f"{where} has label {label}, outside 0..{self.num_classes - 1}")
                images.append(np.asarray(self.transform(open_rgb(item["bytes"] or item["path"], name=where))))
            except BadImageError as e:
                failed.append(str(e))
                continue
            labels.append(label)
            kept.append(row)
        images = np.stack(images) if images else np.zeros((0, 1, 1, 3), np.uint8)
        # NHWC storage viewed as NCHW is exactly torch's channels_last layout: no copy, and convs prefer it
        return (torch.from_numpy(images).permute(0, 3, 1, 2), torch.tensor(labels, dtype=torch.int64),
                torch.tensor(kept, dtype=torch.int64), failed)


def streams(data_path: str, train_bytes: int, device: torch.device, local_processes: int) -> bool:
    """Whether the training set is streamed: `stream` asked for it, or (`auto`) its decoded `train_bytes`
    exceed the memory budget of one of the machine's `local_processes`."""
    return data_path == "stream" or (data_path == "auto" and train_bytes > memory_budget(device, local_processes))


def memory_budget(device: torch.device, local_processes: int = 1) -> int:
    """Bytes a decoded training set may take in one process: a quarter of the RAM divided among the machine's
    `local_processes`, each of which may hold a whole copy (readers of the cache share its pages, but
    without the cache each process decodes its own), and a quarter of the GPU's memory when it lives there."""
    budget = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4 // local_processes
    if device.type == "cuda":
        budget = min(budget, torch.cuda.get_device_properties(device).total_memory // 4)
    return budget


def _as_tensors(images: np.ndarray, labels: np.ndarray, rows: np.ndarray, skipped: int) -> TensorSplit:
    # NHWC storage viewed as NCHW is exactly torch's channels_last layout: no copy, and convs prefer it
    return TensorSplit(torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels),
                       torch.from_numpy(rows), skipped)
