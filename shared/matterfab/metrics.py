"""Prometheus metrics every service exposes (DESIGN §1: ops watch progress and lag)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

MESSAGES = Counter(
    "matterfab_messages_total", "Messages processed", ["service", "topic", "outcome"]
)
FAILURES = Counter("matterfab_failures_total", "Processing failures", ["service", "reason"])
PROCESSING = Histogram(
    "matterfab_processing_seconds",
    "Time to process one message",
    ["service"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
IN_FLIGHT = Gauge("matterfab_in_flight", "Messages being processed", ["service"])
BATCHES = Counter("matterfab_batches_total", "Consumer batches committed", ["service"])
# Devices handled per stage: a lot message (signer, builder) counts each of its devices, any
# other message one. What "devices per minute" on the dashboard is made of.
DEVICES = Counter("matterfab_devices_total", "Devices handled", ["service", "topic"])
# Station results as published: flashed, or failed (final="false": the image went back).
STATION_RESULTS = Counter(
    "matterfab_station_results_total", "Station results", ["line", "status", "final"]
)
# 1 while the process's /healthz answers 200: every dependency answers (alerts: healthz).
READY = Gauge("matterfab_ready", "1 while /healthz answers 200, else 0")
# One per request sent to the S3 store (each attempt of a retried call; obstore's own short
# internal retries are not seen), by S3 operation: put, get, head, list (one per result page),
# delete, head_bucket, create_bucket. What a store bills by, and what bench reports per device.
S3_REQUESTS = Counter("matterfab_s3_requests_total", "Requests sent to the S3 store", ["op"])


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Expose /metrics on the port (0: do not serve)."""
    if port:
        start_http_server(port, addr=host)
