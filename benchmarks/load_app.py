"""Load test: start the app (as `python app.py` would run) and hammer /predict with concurrent gradio_client clients.

    python -m benchmarks.load_app                       # 16 clients x 200 requests, bundled model
    python -m benchmarks.load_app --model runs/cifar10 --clients 4 --requests 50

Prints successes, failures and latency percentiles; exits 1 if any request failed.
Traffic goes to 127.0.0.1 only, and the run is bounded by --clients x --requests.
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from gradio_client import Client, handle_file
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: list[str], port: int, env: dict | None = None, timeout: float = 120) -> subprocess.Popen:
    """`python <args>` in the project root, once it answers GET /healthz on `port`; its stderr goes to a
    temporary file (a pipe nobody reads would block a chatty server) and is quoted if it dies."""
    log = tempfile.TemporaryFile(mode="w+")
    env = dict(os.environ if env is None else env, GRADIO_ANALYTICS_ENABLED="False")
    server = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, env=env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{' '.join(args)} exited with status {server.returncode}:\n{log.read()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.3)
    server.kill()
    raise RuntimeError(f"{' '.join(args)} did not answer /healthz within {timeout:.0f} s")


def start_app(model: str | None, port: int, env: dict | None = None) -> subprocess.Popen:
    """app.py as a Space runs it, on 127.0.0.1:`port`."""
    return start_server(["app.py", "--host", "127.0.0.1", "--port", str(port), *(["--model", model] if model else [])],
                        port, env)


def run_client(url: str, image: str, requests: int, latencies: list, failures: list) -> None:
    try:
        client = Client(url, verbose=False)
    except Exception as e:  # a client that cannot even connect fails all its requests
        failures.extend([f"connect: {e}"] * requests)
        return
    for _ in range(requests):
        start = time.perf_counter()
        try:
            label, _ = client.predict(handle_file(image), 3, api_name="/predict")
            assert len(label["confidences"]) == 3
            latencies.append(time.perf_counter() - start)
        except Exception as e:
            failures.append(f"{type(e).__name__}: {e}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder or Hub id (default: the bundled model)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--image", help="image to send (default: a generated 128x128 picture)")
    args = parser.parse_args(argv)

    image = args.image
    if image is None:
        image = str(Path(tempfile.mkdtemp()) / "load.png")
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(image)
    port = free_port()
    app = start_app(args.model, port)
    latencies, failures = [], []
    try:
        threads = [threading.Thread(target=run_client, args=(f"http://127.0.0.1:{port}/", image, args.requests,
                                                             latencies, failures)) for _ in range(args.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        app.terminate()
        app.wait(timeout=30)

    total = args.clients * args.requests
    ms = np.asarray(latencies) * 1000
    print("| clients | requests | ok | failed | p50 ms | p95 ms | p99 ms | requests/s |")
    print("|---|---|---|---|---|---|---|---|")
    p50, p95, p99 = (np.percentile(ms, q) if len(ms) else float("nan") for q in (50, 95, 99))
    print(f"| {args.clients} | {total} | {len(latencies)} | {len(failures)} | {p50:.0f} | {p95:.0f} | {p99:.0f} "
          f"| {len(latencies) / wall:.1f} |")
    for failure in sorted(set(failures))[:10]:
        print("failure:", failure)
    return 1 if failures or len(latencies) != total else 0


if __name__ == "__main__":
    sys.exit(main())
