"""Two checkouts of the app served side by side and called in turn with the same image: REST and gradio_client p50
of each, so a change's cost is read as a ratio measured in one run.

    git worktree add /tmp/before <commit>
    python -m benchmarks.app_tree_ab /tmp/before .  --calls 100
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from gradio_client import Client, handle_file

from benchmarks.load_app import free_port, start_server

IMAGE = Path(__file__).resolve().parents[1] / "models" / "cifar10-resnet18" / "samples" / "gallery" / "0000.png"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs=2, type=Path, help="two project checkouts: before, after")
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args(argv)
    data = IMAGE.read_bytes()
    servers = {}
    try:
        for tree in args.trees:
            port = free_port()
            app = start_server(["app.py", "--host", "127.0.0.1", "--port", str(port)], port, cwd=tree.resolve())
            servers[tree] = (app, f"http://127.0.0.1:{port}/")
        clients = {tree: Client(url, verbose=False) for tree, (_, url) in servers.items()}
        times = {tree: ([], []) for tree in servers}
        for i in range(10 + args.calls):  # ten warm-up rounds, not counted
            for tree, (_, url) in servers.items():
                start_s = time.perf_counter()
                httpx.post(f"{url}api/classify", files={"file": (IMAGE.name, data, "image/png")}, timeout=60)
                rest = time.perf_counter() - start_s
                start_s = time.perf_counter()
                clients[tree].predict(handle_file(str(IMAGE)), 3, api_name="/predict")
                if i >= 10:
                    times[tree][0].append(rest)
                    times[tree][1].append(time.perf_counter() - start_s)
    finally:
        for process, _ in servers.values():
            process.terminate()
    print("| tree | REST p50 ms | gradio_client p50 ms |")
    print("|---|---|---|")
    for tree, (rest, gradio) in times.items():
        print(f"| {tree} | {1000 * np.median(rest):.1f} | {1000 * np.median(gradio):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
