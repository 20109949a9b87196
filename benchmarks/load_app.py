"""Load test: start the app (as `python app.py` would run it) and load it with concurrent clients, half through
gradio_client (/predict) and half through REST (POST /api/classify), optionally with a burst of large uploads, while
the server's memory is sampled.

    python -m benchmarks.load_app                       # 16 clients x 200 requests, bundled model
    python -m benchmarks.load_app --burst 20            # ... plus 20 concurrent 8000x8000 PNG uploads mid-run
    python -m benchmarks.load_app --model runs/cifar10 --clients 4 --requests 50

Prints one table row per kind of traffic (ok, failed, answered busy, latency percentiles) and the server's peak
memory; exits 1 if any well-formed request failed or the server grew past --memory-ceiling-mb. A request answered
"busy" (REST 503 with Retry-After) is retried after the pause it names, as a well-behaved client does, and counted
apart. Traffic goes to 127.0.0.1 only, and the run is bounded by --clients x --requests (+ --burst).
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


def start_server(args: list[str], port: int, env: dict | None = None, timeout: float = 120,
                 cwd: Path = ROOT) -> subprocess.Popen:
    """`python <args>` in the project root, once it answers GET /healthz on `port`; its stderr goes to a
    temporary file (a pipe nobody reads would block a chatty server) and is quoted if it dies."""
    log = tempfile.TemporaryFile(mode="w+")
    env = dict(os.environ if env is None else env, GRADIO_ANALYTICS_ENABLED="False")
    server = subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=log, env=env)
    server.log = log  # what it printed, for a caller that checks it
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


def run_client(url: str, image: str, requests: int, latencies: list, failures: list, busy: list | None = None) -> None:
    try:
        client = Client(url, verbose=False)
    except Exception as e:  # a client that cannot even connect fails all its requests
        failures.extend([f"connect: {e}"] * requests)
        return
    for _ in range(requests):
        start = time.perf_counter()
        try:
            label, *_ = client.predict(handle_file(image), 3, api_name="/predict")
            assert len(label["confidences"]) == 3
            latencies.append(time.perf_counter() - start)
        except Exception as e:
            failures.append(f"gradio: {type(e).__name__}: {e}")


def run_rest_client(url: str, image: str, requests: int, latencies: list, failures: list, busy: list) -> None:
    data = Path(image).read_bytes()
    with httpx.Client(timeout=300) as http:
        for _ in range(requests):
            start = time.perf_counter()
            try:
                while True:
                    response = http.post(f"{url}api/classify?top_k=3",
                                         files={"file": (Path(image).name, data, "image/png")})
                    if response.status_code != 503:
                        break
                    busy.append(1)
                    time.sleep(float(response.headers.get("retry-after", 1)))
                assert response.status_code == 200, f"{response.status_code} {response.text[:200]}"
                assert len(response.json()["predictions"]) == 3
                latencies.append(time.perf_counter() - start)
            except Exception as e:
                failures.append(f"rest: {type(e).__name__}: {e}")


def large_png(path: Path, side: int = 8000) -> Path:
    """A side x side RGB PNG that compresses to a few MB (a smooth gradient), so it passes the 20 MB upload cap
    and still decodes to side^2 pixels: the expensive kind of upload."""
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    pixels = np.empty((side, side, 3), np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = ramp[None, :], ramp[:, None], 128
    Image.fromarray(pixels).save(path, compress_level=1)
    return path


class MemorySampler:
    """The server's resident memory, sampled every 0.1 s, and its peak (VmHWM) read from /proc at the end."""

    def __init__(self, pid: int):
        self.pid, self.samples, self._stop = pid, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _field_mb(self, name: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def _run(self):
        while not self._stop.wait(0.1):
            try:
                self.samples.append(self._field_mb("VmRSS"))
            except OSError:
                return

    def start(self) -> float:
        rest = self._field_mb("VmRSS")
        self._thread.start()
        return rest

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self._field_mb("VmHWM")


def run_traffic(targets: list[tuple], latencies: list, failures: list, busy: list) -> float:
    threads = [threading.Thread(target=fn, args=(*args, latencies, failures, busy)) for fn, *args in targets]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def row(kind: str, clients: int, total: int, latencies: list, failures: list, busy: list, wall: float) -> str:
    ms = np.asarray(latencies) * 1000
    p50, p95, p99 = (np.percentile(ms, q) if len(ms) else float("nan") for q in (50, 95, 99))
    return (f"| {kind} | {clients} | {total} | {len(latencies)} | {len(failures)} | {len(busy)} | {p50:.0f} | {p95:.0f} "
            f"| {p99:.0f} | {len(latencies) / wall:.1f} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model folder or Hub id (default: the bundled model)")
    parser.add_argument("--clients", type=int, default=16, help="half use gradio_client, half REST")
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--image", help="image to send (default: a generated 128x128 picture)")
    parser.add_argument("--burst", type=int, default=0,
                        help="this many concurrent uploads of an 8000x8000 PNG (half REST, half gradio_client), "
                             "started once the clients are running")
    parser.add_argument("--burst-side", type=int, default=8000, help=argparse.SUPPRESS)
    parser.add_argument("--memory-ceiling-mb", type=float, default=700,
                        help="the server's growth above its resting memory that fails the run (default 700: two "
                             "64 MP decodes at 4 bytes a pixel, 512 MB, plus the model's working memory)")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp())
    image = args.image
    if image is None:
        image = str(folder / "load.png")
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(image)
    big = str(large_png(folder / "large.png", args.burst_side)) if args.burst else None
    port = free_port()
    app = start_app(args.model, port)
    url = f"http://127.0.0.1:{port}/"
    memory = MemorySampler(app.pid)
    steady, burst = ([], [], []), ([], [], [])
    try:
        resting_mb = memory.start()
        clients = [(run_client if i % 2 == 0 else run_rest_client, url, image, args.requests)
                   for i in range(args.clients)]
        bursting = [(run_client if i % 2 == 0 else run_rest_client, url, big, 1) for i in range(args.burst)]
        burst_wall = []

        def fire_burst():
            time.sleep(2.0)  # the steady clients are connected and running
            burst_wall.append(run_traffic(bursting, *burst))

        burster = threading.Thread(target=fire_burst)
        if bursting:
            burster.start()
        wall = run_traffic(clients, *steady)
        if bursting:
            burster.join()
        peak_mb = memory.stop()
    finally:
        app.terminate()
        app.wait(timeout=30)

    print("| traffic | clients | requests | ok | failed | busy, retried | p50 ms | p95 ms | p99 ms | requests/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(row("128 px image, half gradio_client, half REST", args.clients, args.clients * args.requests, *steady, wall))
    if bursting:
        print(row(f"{args.burst_side}x{args.burst_side} PNG burst", args.burst, args.burst, *burst, burst_wall[0]))
    growth_mb = peak_mb - resting_mb
    within = growth_mb <= args.memory_ceiling_mb
    print(f"\nserver memory: {resting_mb:.0f} MB at rest, peak {peak_mb:.0f} MB (+{growth_mb:.0f} MB under load; "
          f"ceiling +{args.memory_ceiling_mb:.0f} MB: {'within' if within else 'EXCEEDED'})")
    failures = steady[1] + burst[1]
    for failure in sorted(set(failures))[:10]:
        print("failure:", failure)
    expected = args.clients * args.requests + args.burst
    return 1 if failures or len(steady[0]) + len(burst[0]) != expected or not within else 0


if __name__ == "__main__":
    sys.exit(main())
