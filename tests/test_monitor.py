"""Monitoring (/stats, the Monitoring tab's data): exact counts and latency percentiles, in the monitor and on a
live server."""
import time

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file

from classifier.monitor import RequestMonitor

from .helpers import create_served_app, serve


def test_the_statistics_of_known_requests():
    monitor = RequestMonitor()
    for ms in range(1, 101):  # 1, 2, ..., 100 ms
        monitor.record("predict", float(ms), top1="cat" if ms % 4 else "dog")
    monitor.record("predict", 7.0, error="not an image")
    monitor.record("samples", 3.0)
    stats = monitor.stats()
    latencies = [*range(1, 101), 7]
    assert (stats["requests"], stats["errors"]) == (102, 1)
    assert stats["endpoints"]["predict"] == {
        "requests": 101, "errors": 1, "latency_ms_p50": round(float(np.percentile(latencies, 50)), 2),
        "latency_ms_p95": round(float(np.percentile(latencies, 95)), 2)}
    assert stats["endpoints"]["predict"]["latency_ms_p50"] == 50.0 and stats["endpoints"]["samples"]["requests"] == 1
    assert stats["top1_histogram"] == {"cat": 75, "dog": 25}  # errors predict no class


@pytest.mark.slow
def test_a_live_server_reports_the_requests_it_served(trained, corpus_image):
    """A server of its own: the counts are exactly the calls made, and each latency percentile lies within what
    the client measured around the same calls (the server's time is part of the round trip)."""
    with serve(create_served_app(trained)) as base:
        client = Client(base, verbose=False)
        round_trips = []
        for _ in range(6):
            started = time.perf_counter()
            client.predict(handle_file(str(corpus_image)), 1, api_name="/predict")
            round_trips.append(1000 * (time.perf_counter() - started))
        stats = httpx.get(f"{base}api/stats").json()
    predict = stats["endpoints"]["predict"]
    assert (stats["requests"], stats["errors"], predict["requests"], predict["errors"]) == (6, 0, 6, 0)
    assert 0 < predict["latency_ms_p50"] <= predict["latency_ms_p95"] <= max(round_trips)
    assert predict["latency_ms_p50"] <= np.median(round_trips)
    assert sum(stats["top1_histogram"].values()) == 6
