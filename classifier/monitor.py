"""Request monitoring: one structured log line per request, running statistics, and the recent requests as a
timeline for the Monitoring tab's plots."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, defaultdict, deque

import numpy as np

log = logging.getLogger("classifier.requests")


class RequestMonitor:
    def __init__(self, window: int = 10_000):
        self._lock = threading.Lock()
        self._latencies = defaultdict(lambda: deque(maxlen=window))  # per endpoint, the newest `window` requests
        self._recent = deque(maxlen=window)  # (time, endpoint, latency_ms, failed) of the newest requests
        self._counts = Counter()
        self._errors = Counter()
        self._classes = Counter()

    def record(self, endpoint: str, latency_ms: float, top1: str | None = None, image_size=None,
               error: str | None = None, model: str | None = None) -> None:
        entry = {"endpoint": endpoint, "latency_ms": round(latency_ms, 2), "top1": top1, "model": model,
                 "image_size": list(image_size) if image_size else None}
        if error:
            entry["error"] = error
        log.info(json.dumps(entry))
        with self._lock:
            self._counts[endpoint] += 1
            self._latencies[endpoint].append(latency_ms)
            self._recent.append((time.time(), endpoint, latency_ms, bool(error)))
            if error:
                self._errors[endpoint] += 1
            elif top1 is not None:
                self._classes[top1] += 1

    def stats(self) -> dict:
        with self._lock:
            endpoints = {}
            for name, latencies in self._latencies.items():
                values = np.asarray(latencies)
                endpoints[name] = {"requests": self._counts[name], "errors": self._errors[name],
                                   "latency_ms_p50": round(float(np.percentile(values, 50)), 2),
                                   "latency_ms_p95": round(float(np.percentile(values, 95)), 2)}
            return {"requests": sum(self._counts.values()), "errors": sum(self._errors.values()),
                    "endpoints": endpoints, "top1_histogram": dict(self._classes.most_common())}

    def timeline(self, bucket_s: int = 10, span_s: int = 1800) -> list[dict]:
        """Per endpoint and `bucket_s`-second bucket of the last `span_s` seconds: requests, errors and median
        latency. Buckets without requests are left out."""
        now = time.time()
        with self._lock:
            recent = [r for r in self._recent if r[0] >= now - span_s]
        buckets = defaultdict(list)
        for t, endpoint, latency_ms, failed in recent:
            buckets[(int(t // bucket_s) * bucket_s, endpoint)].append((latency_ms, failed))
        return [{"time": start, "endpoint": endpoint, "requests": len(items),
                 "errors": sum(failed for _, failed in items),
                 "latency_ms_p50": float(np.median([latency for latency, _ in items]))}
                for (start, endpoint), items in sorted(buckets.items())]
