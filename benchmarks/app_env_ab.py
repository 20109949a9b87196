"""A/B of the app's process environment (thread settings): app.py runs under each variant in turn, twice,
in mirrored order, with Gradio's no-op floor halfway and at the end, so drift on a shared machine hits
every variant alike. One table row per run: REST p50, gradio_client p50, requests/s with 16 clients.

    python -m benchmarks.app_env_ab                       # the thread settings compared in docs/PERFORMANCE.md
    python -m benchmarks.app_env_ab --variant app= --variant 2-threads=OMP_NUM_THREADS=2
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path

from benchmarks.inference_speed import gradio_rows, rest_row
from benchmarks.load_app import free_port, start_app, start_server
from classifier.predict import bundled_model_folders

DEFAULT_VARIANTS = [
    "app=",  # the app's own setting: forward passes on one core fewer than it may use
    "2-threads=OMP_NUM_THREADS=2",  # torch's default on 2 cores: a 2-thread OpenMP team that spins between ops
    "2-threads-passive=OMP_NUM_THREADS=2,OMP_WAIT_POLICY=PASSIVE",  # the team sleeps instead of spinning
    "2-threads-spin10k=OMP_NUM_THREADS=2,GOMP_SPINCOUNT=10000",  # spins about 30x shorter before sleeping
]


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, assignments = text.partition("=")
    return name, dict(a.split("=", 1) for a in assignments.split(",") if a)


def measure(server, url: str, image: str, requests: int, clients: int, client_requests: int) -> tuple:
    try:
        rest = rest_row(url, Path(image).read_bytes(), requests)[0]
        gradio = gradio_rows(url + "/", image, requests, clients, client_requests)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return rest, gradio["p50"], gradio["rate"], gradio["failed"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", help="NAME=VAR=VALUE[,VAR=VALUE...]; NAME= for no change")
    parser.add_argument("--requests", type=int, default=60, help="sequential calls per latency figure")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--client-requests", type=int, default=15)
    args = parser.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant or DEFAULT_VARIANTS]
    model = bundled_model_folders()[0]
    image = str(sorted((model / "samples" / "gallery").iterdir())[0])
    order = variants + [("noop", None)] + variants[::-1] + [("noop", None)]
    results: dict[str, list] = {}
    print(f"{model.name}, {args.requests} sequential calls, then {args.clients} clients x {args.client_requests}\n")
    print(f"| run | REST p50 ms | gradio_client p50 ms | requests/s, {args.clients} clients | failed |")
    print("|---|---|---|---|---|")
    for name, env in order:
        port = free_port()
        if env is None:
            server = start_server(["-m", "benchmarks.noop_app", "--port", str(port)], port)
        else:
            server = start_app(str(model), port, dict(os.environ, **env))
        row = measure(server, f"http://127.0.0.1:{port}", image, args.requests, args.clients, args.client_requests)
        results.setdefault(name, []).append(row)
        print(f"| {name} | {row[0]:.1f} | {row[1]:.1f} | {row[2]:.2f} | {row[3]} |", flush=True)
    floor = statistics.mean(r[2] for r in results["noop"])
    print("\n| variant | REST p50 ms (mean) | gradio_client p50 ms (mean) | requests/s (mean) | x floor |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        rest, gradio, rate = (statistics.mean(r[i] for r in rows) for i in range(3))
        print(f"| {name} | {rest:.1f} | {gradio:.1f} | {rate:.2f} | {rate / floor:.2f} |")
    return 1 if any(r[3] for rows in results.values() for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
