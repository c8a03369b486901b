"""Per-destination routing metrics (Prometheus, like common/observability.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

QUEUED = Gauge("dicomserver_routing_queued", "Deliveries waiting in a destination's queue", ["destination"])
LAG = Gauge(
    "dicomserver_routing_lag_seconds",
    "How long the oldest delivery waiting for a destination has waited (0 when none waits)",
    ["destination"],
)
SENT = Counter("dicomserver_routing_sent_total", "Instances a destination took", ["destination"])
FAILED = Counter(
    "dicomserver_routing_failed_total",
    "Delivery attempts that failed (each retry counts; see dead letters for those given up)",
    ["destination"],
)
DEAD_LETTERS = Gauge(
    "dicomserver_routing_dead_letters", "Deliveries given up, until they are replayed", ["destination"]
)
