"""Run by test_distributed.py, alone and under torchrun: evaluates a model folder on a dataset's test split
with the training loop's own evaluate_split, once per batch size given (comma-separated), and writes the
metrics of each, keyed by batch size (main process only)."""
import json
import sys

import torch
from accelerate import Accelerator

from classifier.data import decode_split, load_splits
from classifier.model import load_folder
from classifier.engine import eval_loader, evaluate_split

model_dir, dataset, out, batch_sizes = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
accelerator = Accelerator(mixed_precision="no")
loaded = load_folder(model_dir)
splits = load_splits(dataset)
size = loaded.data_config["input_size"][-1]
test = decode_split(splits.test, splits.image_column, splits.label_column, len(splits.label_names), size,
                    use_cache=False)
model = accelerator.prepare(loaded.model)
mean = torch.tensor(loaded.data_config["mean"])
std = torch.tensor(loaded.data_config["std"])
results = {}
for batch_size in map(int, batch_sizes.split(",")):
    loader = accelerator.prepare(eval_loader(test, batch_size))
    result, _ = evaluate_split(model, loader, accelerator, mean, std, len(splits.label_names))
    results[batch_size] = dict(result, num_processes=accelerator.num_processes)
if accelerator.is_main_process:
    json.dump(results, open(out, "w"))
# the DDP model holds the process group: freed here, the group's gloo threads end with end_training, not during
# the interpreter's shutdown, where they can abort the process (docs/TRAINING.md, "terminate called ...")
del model
accelerator.end_training()
