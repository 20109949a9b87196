"""Run by test_distributed.py, alone and under torchrun: evaluates a model folder on a dataset's test split
with the training loop's own evaluate_split and writes the metrics (main process only)."""
import json
import sys

import torch
from accelerate import Accelerator

from classifier.data import decode_split, load_splits
from classifier.model import load_folder
from classifier.engine import eval_loader, evaluate_split

model_dir, dataset, out, batch_size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
accelerator = Accelerator(mixed_precision="no")
loaded = load_folder(model_dir)
splits = load_splits(dataset)
size = loaded.data_config["input_size"][-1]
test = decode_split(splits.test, splits.image_column, splits.label_column, len(splits.label_names), size,
                    use_cache=False)
model, loader = accelerator.prepare(loaded.model, eval_loader(test, batch_size))
mean = torch.tensor(loaded.data_config["mean"])
std = torch.tensor(loaded.data_config["std"])
result, _ = evaluate_split(model, loader, accelerator, mean, std, len(splits.label_names))
if accelerator.is_main_process:
    json.dump(dict(result, num_processes=accelerator.num_processes), open(out, "w"))
