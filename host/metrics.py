"""Prometheus metrics of the suffix server (`GET /metrics`), kept in a registry of the server's own so two
servers in one process (tests) never share counters."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

# Seconds: a handoff's model call takes milliseconds; a queue behind a large batch can reach seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """What `GET /metrics` exposes: requests by path and status, handoffs in flight, batch sizes, and the
    queue / compute / total latency of every answered handoff."""

    def __init__(self, model_hash: str, bundle_id: str) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("eeasr_http_requests", "HTTP requests answered, by path and status code",
                                ["path", "status"], registry=r)
        self.in_flight = Gauge("eeasr_handoffs_in_flight", "Handoffs received and not yet answered", registry=r)
        self.batch_size = Histogram("eeasr_batch_size", "Handoffs run together in one model call",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue = Histogram("eeasr_handoff_queue_seconds", "Wait from a handoff's arrival to its batch's start",
                               buckets=LATENCY_BUCKETS, registry=r)
        self.compute = Histogram("eeasr_handoff_compute_seconds", "Model call and decoding of a handoff's batch",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.total = Histogram("eeasr_handoff_seconds", "From a handoff request's arrival to its reply",
                               buckets=LATENCY_BUCKETS, registry=r)
        info = Gauge("eeasr_server_info", "The bundle this server runs (value 1)", ["model_hash", "bundle_id"],
                     registry=r)
        info.labels(model_hash=model_hash, bundle_id=bundle_id).set(1)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition in the format the scraper's Accept header asks for: (body, content type)."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


__all__ = ["ServerMetrics", "LATENCY_BUCKETS", "BATCH_BUCKETS"]
