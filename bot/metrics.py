"""Prometheus metrics, one registry per application so tests can count in isolation."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4


class Metrics:
    content_type = CONTENT_TYPE_PLAIN_0_0_4

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.webhooks_received = Counter(
            "starex_webhooks_received",
            "Starex webhooks accepted, by outcome",
            ["outcome"],  # stored, duplicate, stale
            registry=self.registry,
        )
        self.webhooks_rejected = Counter(
            "starex_webhooks_rejected",
            "Starex webhooks refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.notifications_sent = Counter(
            "notifications_sent", "Notifications delivered to Telegram", registry=self.registry
        )
        self.notifications_failed = Counter(
            "notifications_failed",
            "Notification send attempts that failed, by kind",
            ["kind"],  # retry_after, network, server, blocked, bad_request, gave_up, render
            registry=self.registry,
        )
        self.notifications_pending = Gauge(
            "notifications_pending", "Notifications waiting in the outbox", registry=self.registry
        )
        # An operator alerts when this stops moving: the dispatcher is stuck or dead.
        self.outbox_read = Gauge(
            "notifications_outbox_read_timestamp_seconds",
            "When the dispatcher last finished a round over the outbox (Unix time)",
            registry=self.registry,
        )
        self.starex_latency = Histogram(
            "starex_api_request_seconds",
            "Starex API request latency",
            ["endpoint"],
            registry=self.registry,
        )
        self.starex_errors = Counter(
            "starex_api_errors",
            "Starex API errors, by kind",
            ["endpoint", "kind"],
            registry=self.registry,
        )

    def observe_starex(self, endpoint: str, seconds: float, error: str | None) -> None:
        self.starex_latency.labels(endpoint).observe(seconds)
        if error is not None:
            self.starex_errors.labels(endpoint, error).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
