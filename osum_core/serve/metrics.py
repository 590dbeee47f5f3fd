"""The metrics of ``GET /metrics``, in Prometheus' text format (prometheus_client): requests by endpoint and
status, decoded batch sizes, time waiting for a batch, request latency, and audio seconds against decoding
seconds (their ratio is the real-time factor; each batch's is also a histogram)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from osum_core.serve.batcher import BatchReport

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("osum_requests", "Requests answered, by endpoint and HTTP status",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("osum_request_latency_seconds", "From a request's arrival to its answer",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("osum_batch_size", "Rows (utterances or windows) decoded together",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.batches = Counter("osum_batches", "Batches decoded, by outcome", ["outcome"], registry=r)
        self.queue_wait = Histogram("osum_queue_seconds", "A request's wait until its batch starts decoding",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.decode_seconds = Counter("osum_decode_seconds", "Time spent decoding batches", registry=r)
        self.audio_seconds = Counter("osum_audio_seconds", "Seconds of audio decoded", registry=r)
        self.real_time_factor = Histogram("osum_batch_real_time_factor",
                                          "A batch's decoding time per second of its audio",
                                          buckets=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3), registry=r)
        self.queued = Gauge("osum_queued_requests", "Requests waiting or decoding", registry=r)

    def batch(self, report: BatchReport) -> None:
        self.batch_rows.observe(report.rows)
        self.batches.labels("failed" if report.failed else "ok").inc()
        for wait in report.queue_seconds:
            self.queue_wait.observe(wait)
        self.decode_seconds.inc(report.decode_seconds)
        self.audio_seconds.inc(report.audio_seconds)
        if report.audio_seconds > 0:
            self.real_time_factor.observe(report.decode_seconds / report.audio_seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
