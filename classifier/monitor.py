"""Request monitoring: one structured log line per request, and running statistics for the stats view."""
from __future__ import annotations

import json
import logging
import threading
from collections import Counter, defaultdict, deque

import numpy as np

log = logging.getLogger("classifier.requests")


class RequestMonitor:
    def __init__(self, window: int = 10_000):
        self._lock = threading.Lock()
        self._latencies = defaultdict(lambda: deque(maxlen=window))  # per endpoint, the newest `window` requests
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
