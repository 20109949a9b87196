"""Inference latency and throughput along the app's path, against the model alone and Gradio's own floor.

    python -m benchmarks.inference_speed                      # the bundled model
    python -m benchmarks.inference_speed --model runs/cifar10 --requests 200

One run measures, with the same image (the model's first gallery sample):
- model-only: the network on an already preprocessed 1-image tensor with the model's test-time views (the
  image and its mirror for `test_time_augmentation: flip`), with the app's thread count, and with every
  core when that differs; and on the image alone;
- Predictor: decoding the uploaded bytes + timm preprocessing + the network (what every endpoint calls);
- batch: Predictor.classify_many on 256 decoded images (the batch endpoint's path), images/s;
- REST: POST /api/classify to app.py over loopback, and to a no-op endpoint (HTTP's own floor);
- gradio_client: /predict on app.py, one client, then 16 concurrent clients;
- Gradio's floor: the same calls against benchmarks/noop_app.py, a no-op function behind the same stack.
Servers run as subprocesses, as a Space runs them; the clients run here.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from gradio_client import Client, handle_file

from benchmarks.load_app import free_port, run_client, start_app, start_server
from classifier.hardware import cpu_supports_bf16, describe_hardware
from classifier.images import open_rgb
from classifier.model import view_probabilities
from classifier.predict import Predictor, load_predictors, on_torch_thread, usable_cpus


def percentiles(seconds: list[float]) -> tuple[float, float]:
    ms = 1000 * np.asarray(seconds)
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def with_threads(n: int, fn, *args):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def timed(call, n: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def concurrent_rate(url: str, image: str, clients: int, requests: int) -> tuple[float, int]:
    """Requests per second with `clients` gradio_client clients in threads; and the number of failures."""
    latencies, failures = [], []
    threads = [threading.Thread(target=run_client, args=(url, image, requests, latencies, failures))
               for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / (time.perf_counter() - start), len(failures)


def gradio_rows(url: str, image: str, n: int, clients: int, requests: int) -> dict:
    client = Client(url, verbose=False)
    p50, p95 = percentiles(timed(lambda: client.predict(handle_file(image), 3, api_name="/predict"), n))
    rate, failed = concurrent_rate(url, image, clients, requests)
    return {"p50": p50, "p95": p95, "rate": rate, "failed": failed}


def rest_row(url: str, data: bytes, n: int) -> tuple[float, float]:
    with httpx.Client() as http:
        def rest():
            response = http.post(f"{url}/api/classify", files={"file": ("image.png", data)})
            response.raise_for_status()
        return percentiles(timed(rest, n))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder or Hub id (default: the first bundled model)")
    parser.add_argument("--requests", type=int, default=100, help="sequential calls per latency row")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--client-requests", type=int, default=20, help="calls per client in the concurrent rows")
    args = parser.parse_args(argv)

    hardware = describe_hardware(torch.device("cpu"))  # before the app's torch thread sets its own thread count
    predictors, _ = load_predictors(args.model)
    predictor = next(iter(predictors.values()))
    samples = [s for s in predictor.samples if s.kind == "gallery"]
    if not samples:
        raise SystemExit(f"{predictor.name} ships no samples/ to benchmark with")
    image_path = str(samples[0].path)
    data = Path(image_path).read_bytes()
    x = predictor.transform(open_rgb(data)).unsqueeze(0)

    tta = predictor.loaded.tta

    def model_only(views: str = tta):
        with torch.inference_mode():
            view_probabilities(predictor.model, x, views)

    rows = {}
    # on the thread that runs the app's forward passes, with its thread count, as Predictor does
    # (classifier/predict.py says why); then with every core, for what a single request gives up.
    # With the model's test-time views, because that is the network's share of every prediction.
    rows["model-only"] = percentiles(on_torch_thread(timed, model_only, args.requests))
    if tta != "none":
        rows["model-only, the image alone (no test-time views)"] = percentiles(
            on_torch_thread(timed, lambda: model_only("none"), args.requests))
    app_threads, cores = on_torch_thread(torch.get_num_threads), usable_cpus()
    if cores != app_threads:
        rows[f"model-only, {cores} threads (not the app's setting)"] = percentiles(
            on_torch_thread(with_threads, cores, timed, model_only, args.requests))
    # the app's precision (auto: bf16 where the CPU runs it natively), and the other one beside it
    other = "fp32" if predictor.precision == "bf16" else "bf16"
    by_precision = {predictor.precision: predictor}
    if cpu_supports_bf16():
        by_precision[other] = Predictor(predictor.loaded, predictor.name, other)
    batch, batch_rates = [open_rgb(data)] * 256, {}
    for precision, p in by_precision.items():
        suffix = f" ({precision}{', the app' if p is predictor else ''})"
        rows["Predictor" + suffix] = percentiles(timed(lambda: p.classify(data), args.requests))
        p.classify_many(batch[:32])  # warm-up
        start = time.perf_counter()
        p.classify_many(batch)
        batch_rates[suffix] = len(batch) / (time.perf_counter() - start)

    port = free_port()
    app = start_app(args.model, port)
    try:
        url = f"http://127.0.0.1:{port}"
        rows["REST /api/classify"] = rest_row(url, data, args.requests)
        ours = gradio_rows(url + "/", image_path, args.requests, args.clients, args.client_requests)
    finally:
        app.terminate()
        app.wait(timeout=30)
    port = free_port()
    noop = start_server(["-m", "benchmarks.noop_app", "--port", str(port)], port)
    try:
        rows["REST no-op (HTTP's floor)"] = rest_row(f"http://127.0.0.1:{port}", data, args.requests)
        floor = gradio_rows(f"http://127.0.0.1:{port}/", image_path, args.requests, args.clients,
                            args.client_requests)
    finally:
        noop.terminate()
        noop.wait(timeout=30)

    model_p50 = rows["model-only"][0]
    print(f"\n{predictor.name} ({predictor.input_size} px, test-time augmentation: {tta}) on {hardware}; "
          f"forward passes on {app_threads} of {cores} usable cores' threads; "
          f"{args.requests} sequential calls per latency row, "
          f"{args.clients} clients x {args.client_requests} calls per concurrent row\n")
    print("| path | p50 ms | p95 ms | throughput |")
    print("|---|---|---|---|")
    for name, (p50, p95) in rows.items():
        print(f"| {name} | {p50:.1f} | {p95:.1f} | |")
    for suffix, rate in batch_rates.items():
        print(f"| Predictor batch of 256{suffix} | | | {rate:.0f} images/s |")
    for name, r in (("gradio_client -> app", ours), ("gradio_client -> no-op (Gradio's floor)", floor)):
        print(f"| {name} | {r['p50']:.1f} | {r['p95']:.1f} | {r['rate']:.1f} requests/s with {args.clients} "
              f"clients ({r['failed']} failed) |")
    print("\n| target | measured | met |")
    print("|---|---|---|")
    limit = floor["p50"] + model_p50 + 10
    print(f"| app p50 <= floor p50 + model-only p50 + 10 ms = {limit:.1f} | {ours['p50']:.1f} "
          f"| {'yes' if ours['p50'] <= limit else 'no'} |")
    ratio = ours["rate"] / floor["rate"]
    print(f"| app throughput >= 0.8 x floor's ({args.clients} clients) | {ratio:.2f} x | "
          f"{'yes' if ratio >= 0.8 else 'no'} |")
    rest_p50 = rows["REST /api/classify"][0]
    print(f"| REST p50 <= model-only p50 + 10 ms = {model_p50 + 10:.1f} | {rest_p50:.1f} "
          f"| {'yes' if rest_p50 <= model_p50 + 10 else 'no'} |")
    return 1 if ours["failed"] or floor["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
