"""Run by test_distributed.py under torchrun with train_accelerate.py's options: what each process draws, with the
run's own set-up (seeds, data, model, recipe), written as JSON by the main process to argv[1].

Every process is given the same images (process 0's first batch), so that only the random draws can differ:
the first batch through the recipe as train_one_epoch's first step takes it, then each random part alone
from freshly set per-process seeds, twice (the same process must draw the same twice). Also each process's
batches of epoch 0, and whether the model (whose initial weights DDP copied from process 0) gives the same
output everywhere in eval mode, where dropout is off. Last, the training loop's window of statistics
(engine.Window) closed with known values per process."""
import json
import sys
import time

import torch
from accelerate.utils import gather_object

from classifier.augment import BatchAugment
from classifier.distributed import seed_processes
from classifier.engine import Window, train_batches
from classifier.options import parse_args
from classifier.train import setup

out = sys.argv[1]
accelerator, record, data, training = setup(parse_args(sys.argv[2:]))
args = record.options
rank, world, batch = accelerator.process_index, accelerator.num_processes, training.plan.batch_size
index = train_batches(len(data.train), batch, args.seed, 0, 0, world)[0]
images, labels = data.train.images[index], data.train.labels[index]
recipe, model = training.recipe, accelerator.unwrap_model(training.state.model)
first_batch, _, _ = recipe(images, labels, args.img_size)  # the RNG is where the training loop's first step finds it

x = BatchAugment("none", args.img_size, training.mean, training.std)(images)  # no random draw: the same everywhere
shift_flip = BatchAugment("basic", args.img_size, training.mean, training.std)
parts = {
    "shift_flip": lambda: shift_flip(images),
    "trivial_augment": lambda: recipe.augment.trivial(images),
    "random_erase": lambda: recipe.augment.erase(x.clone()),
    "mixup_cutmix": lambda: recipe.mixup(x.clone(), labels)[0],
    "dropout": lambda: model.train()(x),
}


def draw(part):
    seed_processes(args.seed)
    with torch.no_grad():
        return parts[part]().float()


differs, repeatable = {}, {}
for part in parts:
    once = draw(part)
    repeatable[part] = bool(torch.equal(once, draw(part)))
    both = accelerator.gather(once[None])
    differs[part] = not torch.equal(both[0], both[1])
first = accelerator.gather(first_batch[None])
with torch.no_grad():
    evaluated = accelerator.gather(model.eval()(x)[None])
orders = gather_object([[b.tolist() for b in train_batches(len(data.train), batch, args.seed, 0, rank, world)]])
window = Window(time.perf_counter())
window.add(torch.tensor(rank + 1.0), torch.tensor(rank + 3), 10 + rank)
losses = window.close(accelerator)
window.add_to(training.state.progress.running)
running = {k: training.state.progress.running[k] for k in ("loss", "correct", "seen")}
if accelerator.is_main_process:
    json.dump({"window": {"losses": losses.tolist(), "running": running}, "num_processes": world, "differs": differs, "repeatable": repeatable,
               "first_batch_differs": not torch.equal(first[0], first[1]),
               "eval_outputs_equal": torch.equal(evaluated[0], evaluated[1]), "train_size": len(data.train),
               "batch_size": batch, "epoch_0_batches": orders}, open(out, "w"))
accelerator.wait_for_everyone()
# the DDP model holds the process group: freed here, the group's gloo threads end with end_training, not during
# the interpreter's shutdown, where they can abort the process (docs/TRAINING.md, "terminate called ...")
model = training = recipe = parts = None
accelerator.end_training()
