"""What test-time flipping gives a model folder: accuracy of the image alone and of the image averaged with
its mirror, on a dataset's validation split (carved from train as training carves it) and its test split.

    python -m benchmarks.tta_gain models/cifar10-resnet18 --dataset ../shared/data/cifar10

Uses the training loop's own evaluate_split and precision, so the numbers match a run's final evaluation.
"""
from __future__ import annotations

import argparse
import sys

import torch
from accelerate import Accelerator, PartialState

from classifier.data import decode_split, load_splits
from classifier.model import load_folder
from classifier.engine import eval_loader, evaluate_split
from classifier.hardware import describe_hardware, resolve_precision


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model folder")
    parser.add_argument("--dataset", required=True, help="what train_accelerate.py --dataset took")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="as in training")
    parser.add_argument("--seed", type=int, default=0, help="as in training (it fixes the carved validation split)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default="auto",
                        help="as train_accelerate.py's (auto = bf16 where supported)")
    args = parser.parse_args(argv)

    device_type = PartialState().device.type
    accelerator = Accelerator(mixed_precision=resolve_precision(args.mixed_precision, device_type)[0])
    loaded = load_folder(args.model)
    splits = load_splits(args.dataset, val_fraction=args.val_fraction, seed=args.seed)
    size, num_classes = loaded.data_config["input_size"][-1], len(splits.label_names)
    model = accelerator.prepare(loaded.model.to(memory_format=torch.channels_last))
    mean = torch.tensor(loaded.data_config["mean"], device=accelerator.device)
    std = torch.tensor(loaded.data_config["std"], device=accelerator.device)
    print(f"\n{args.model} on {args.dataset} ({size} px, {accelerator.mixed_precision} autocast, "
          f"{describe_hardware(accelerator.device)})\n")
    print("| split | images | image alone % | image + mirror % | gain (points) |")
    print("|---|---|---|---|---|")
    for name, split in (("validation", splits.validation), ("test", splits.test)):
        if split is None:
            continue
        data = decode_split(split, splits.image_column, splits.label_column, num_classes, size, desc=name)
        loader = accelerator.prepare(eval_loader(data, args.batch_size))
        result, _ = evaluate_split(model, loader, accelerator, mean, std, num_classes, "flip")
        alone, both = 100 * result["single_view_accuracy"], 100 * result["accuracy"]
        print(f"| {name} | {result['num_samples']} | {alone:.2f} | {both:.2f} | {both - alone:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
