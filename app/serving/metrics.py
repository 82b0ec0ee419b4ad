"""The service's Prometheus metrics, in a registry of their own (never the process-global one)."""

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServeMetrics:
    """Requests, latency, batch sizes, the model version served, predictions by label, low-confidence
    predictions, rejected versions and swaps. No label carries ticket text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "retrainer_serve_requests",
            "HTTP requests answered",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "retrainer_serve_request_seconds",
            "Seconds to answer a request",
            ["endpoint"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "retrainer_serve_batch_size",
            "Tickets scored in one model call",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.model_info = Gauge(
            "retrainer_serve_model_info",
            "The model version being served (1)",
            ["version"],
            registry=self.registry,
        )
        self.predictions = Counter(
            "retrainer_serve_predictions", "Predictions by label", ["label"], registry=self.registry
        )
        self.low_confidence = Counter(
            "retrainer_serve_low_confidence",
            "Predictions whose confidence is under the configured threshold",
            registry=self.registry,
        )
        self.rejections = Counter(
            "retrainer_serve_model_rejections",
            "Versions that failed to load or pass the canary check (not swapped in)",
            ["version"],
            registry=self.registry,
        )
        self.swaps = Counter(
            "retrainer_serve_model_swaps",
            "Times a newly loaded version replaced the one being served",
            registry=self.registry,
        )

    def serving(self, version: str, replaced: str | None) -> None:
        """Record that `version` now serves (in place of `replaced`)."""
        if replaced is not None:
            self.model_info.remove(replaced)
            self.swaps.inc()
        self.model_info.labels(version=version).set(1)

    def render(self) -> tuple[bytes, str]:
        """The metrics in Prometheus' text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
