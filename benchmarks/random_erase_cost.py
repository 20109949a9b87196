"""What random erasing costs in a training step: the project's fixed-shape RandomErase against timm's per-image
RandomErasing (the reference it draws like), each timed alone and inside a bf16 resnet18 step, interleaved.

    python -m benchmarks.random_erase_cost [--img-size 96] [--batch-size 256] [--rounds 4]
"""
import argparse
import time

import timm
import torch
from timm.data.random_erasing import RandomErasing

from classifier.augment import RandomErase


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,))
    erasers = {"none": lambda t: t, "RandomErase (ours)": RandomErase(0.5),
               "timm RandomErasing": RandomErasing(0.5, mode="pixel", device="cpu")}

    def step(erase) -> None:
        with torch.autocast("cpu", torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(erase(x.clone())), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    erase_s, step_s = {k: [] for k in erasers}, {k: [] for k in erasers}
    for erase in erasers.values():
        step(erase)  # warm-up
    for _ in range(args.rounds):
        for name, erase in erasers.items():
            start = time.perf_counter()
            erase(x.clone())
            erase_s[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            step(erase)
            step_s[name].append(time.perf_counter() - start)
    median = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    print(f"\n{args.batch_size} images at {args.img_size} px, probability 0.5, {args.rounds} rounds, medians\n")
    print("| erasing | erase (with the clone) ms | training step s |")
    print("|---|---|---|")
    for name in erasers:
        print(f"| {name} | {1000 * median(erase_s[name]):.1f} | {median(step_s[name]):.3f} |")


if __name__ == "__main__":
    main()
