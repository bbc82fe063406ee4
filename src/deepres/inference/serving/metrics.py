"""The server's Prometheus metrics (prometheus_client, one registry per app): requests by route and status, errors
by kind, images, batch sizes, request latency, and the memory held for requests in flight."""
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # images per batch
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds
ROUTES = ("/", "/v1/predict", "/v1/cam", "/v1/model", "/healthz", "/metrics")  # route labels; others: "other"
CONTENT_TYPE = CONTENT_TYPE_LATEST

disable_created_metrics()  # no *_created series: a scrape shows the counts alone, as before prometheus_client


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("deepres_requests", "HTTP requests answered, by route and status code.",
                                ["route", "status"], registry=self.registry)
        self.errors = Counter("deepres_errors", "Requests refused or failed, by kind.", ["kind"],
                              registry=self.registry)
        self.images = Counter("deepres_images", "Images run through the model.", registry=self.registry)
        self.batch_sizes = Histogram("deepres_batch_size", "Images per model call (dynamic batching).",
                                     buckets=BATCH_BUCKETS, registry=self.registry)
        self.latency = Histogram("deepres_request_latency_seconds", "Time from request to response, by route.",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.inflight = Gauge("deepres_inflight_bytes", "Bytes held for requests in flight (--max-inflight-mb).",
                              registry=self.registry)

    def watch_inflight(self, read) -> None:
        """The in-flight gauge reads `read()` (bytes) at each scrape."""
        self.inflight.set_function(read)

    def record_request(self, path: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES else "docs" if path.startswith(("/docs", "/openapi", "/static")) else "other"
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def record_error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def record_batch(self, images: int) -> None:
        self.batch_sizes.observe(images)
        self.images.inc(images)

    def render(self) -> bytes:
        return generate_latest(self.registry)
