"""The server's Prometheus metrics, in a registry of its own (two servers in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

__all__ = ["ServerMetrics"]

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKENS = (64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class ServerMetrics:
    """Request latency, batch sizes, queue depth, cache hits and misses, documents per task, errors, drift."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.latency = Histogram(
            "embrecycle_request_seconds", "Time from a request's arrival to its response.", ["endpoint"],
            buckets=_LATENCY, registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "embrecycle_requests", "Requests answered, by endpoint and status code.", ["endpoint", "status"], registry=r
        )
        self.batch_documents = Histogram(
            "embrecycle_batch_documents", "Documents per batch (across requests).", buckets=_SIZES, registry=r
        )
        self.batch_requests = Histogram(
            "embrecycle_batch_requests", "Requests merged into one batch.", buckets=_SIZES, registry=r
        )
        self.batch_tokens = Histogram(
            "embrecycle_batch_tokens", "Tokens per batch (before padding).", buckets=_TOKENS, registry=r
        )
        self.queue_depth = Gauge("embrecycle_queue_depth", "Requests waiting for a batch.", registry=r)
        self.in_flight = Gauge("embrecycle_in_flight", "Requests accepted and not yet answered.", registry=r)
        self.cache_hits = Counter(
            "embrecycle_cache_hits", "Documents whose layer-k states were read from the cache.", registry=r
        )
        self.cache_misses = Counter(
            "embrecycle_cache_misses", "Documents whose lower layers ran (not in the cache).", registry=r
        )
        self.documents = Counter("embrecycle_documents", "Documents predicted, per task.", ["task"], registry=r)
        self.errors = Counter("embrecycle_errors", "Requests refused or failed, by kind.", ["kind"], registry=r)
        self.drift = Gauge(
            "embrecycle_drift_js_divergence_bits",
            "Jensen-Shannon divergence (bits) of the task's recent predicted labels from its training labels.",
            ["task"],
            registry=r,
        )
        self.label_share = Gauge(
            "embrecycle_predicted_label_share",
            "Share of each label among the task's recent predictions (the drift window).",
            ["task", "label"],
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
