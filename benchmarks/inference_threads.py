"""Why the app runs every forward pass on one thread: the same Predictor.classify, loaded and called from
different threads, each variant in a fresh process (alternating, twice), p50/p95 ms.

    python -m benchmarks.inference_threads            # the first bundled model

- main: loaded and called on the main thread (what a single-threaded script sees);
- worker: loaded on the main thread, called from a worker thread (what Gradio's and FastAPI's threads
  saw before the app had its torch thread);
- load-in-worker: loaded and called on the same worker thread (the app's torch thread);
- worker, 1 torch thread / main, 1 torch thread: the same with torch.set_num_threads(1), for scale.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

VARIANTS = ("main", "worker", "load-in-worker", "worker, 1 torch thread", "main, 1 torch thread")


def measure(variant: str, calls: int) -> tuple[float, float]:
    import torch

    from classifier.images import open_rgb
    from classifier.model import load
    from classifier.predict import Predictor, bundled_model_folders

    worker = ThreadPoolExecutor(1)

    def on_worker(fn, *args):
        return worker.submit(fn, *args).result()

    def here(fn, *args):
        return fn(*args)

    load_on = on_worker if variant == "load-in-worker" else here
    call_on = here if variant.startswith("main") else on_worker
    folder = bundled_model_folders()[0]
    predictor = load_on(lambda: Predictor(load(folder), folder.name))
    image = open_rgb(predictor.samples[0].path.read_bytes())
    if variant.endswith("1 torch thread"):
        call_on(torch.set_num_threads, 1)
    for _ in range(30):
        call_on(predictor._probabilities, [image])  # the forward pass without the app's own hop
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        call_on(predictor._probabilities, [image])
        seconds.append(time.perf_counter() - start)
    ms = 1000 * np.asarray(seconds)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # one measurement, in the child process
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(measure(args.variant, args.calls)))
        return 0
    results = {v: [] for v in VARIANTS}
    for _ in range(2):
        for variant in VARIANTS:
            out = subprocess.run([sys.executable, "-m", "benchmarks.inference_threads", "--variant", variant,
                                  "--calls", str(args.calls)], stdout=subprocess.PIPE, text=True, check=True)
            results[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("\n| model loaded / called on | p50 ms (run 1, run 2) | p95 ms (run 1, run 2) |\n|---|---|---|")
    for variant, runs in results.items():
        print(f"| {variant} | {runs[0][0]:.1f}, {runs[1][0]:.1f} | {runs[0][1]:.1f}, {runs[1][1]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
