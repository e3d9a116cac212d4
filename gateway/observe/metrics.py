"""Prometheus metrics: a sink of `Accounting`, fed by the same `Outcome`s as the access log.

Every metric lives in the registry given to `Metrics` (one per app, so several apps in one process
never collide). Labels take bounded values only: project names from the policy, operation names from the
catalog, decisions (`forwarded`, `preflight`, `client_closed` or an error key) and status codes. A request
that names no known project or operation is labelled `-`; no path, IP or origin ever becomes a label.

Several worker processes: when `PROMETHEUS_MULTIPROC_DIR` is set, prometheus_client writes every value to
files in that directory, and `scrape_registry()` returns a registry that sums the files of every worker,
so one `/metrics` scrape covers them all (see `admin.py`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.catalog import OPERATIONS
from gateway.errors import ErrorKey
from gateway.guards.idempotency import REPLAYED_DECISION, Result
from gateway.models import Outcome

UNKNOWN = "-"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UPSTREAM_ERROR_KINDS = {
    ErrorKey.UPSTREAM_TIMEOUT.value: "timeout",
    ErrorKey.UPSTREAM_UNAVAILABLE.value: "unavailable",
}
_DECISIONS = frozenset(
    {"forwarded", "preflight", "client_closed", REPLAYED_DECISION} | {key.value for key in ErrorKey}
)
_IDEMPOTENCY_RESULTS = frozenset(result.value for result in Result)
# Checkout calls: most answer in tens of milliseconds; the read timeout defaults to 10 s.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def scrape_registry(registry: CollectorRegistry) -> CollectorRegistry:
    """What `/metrics` should expose: `registry` itself, or every worker's values in multiprocess mode."""
    directory = multiprocess_dir()
    if directory is None:
        return registry
    combined = CollectorRegistry()
    MultiProcessCollector(combined, path=directory)  # type: ignore[no-untyped-call]
    return combined


class Metrics:
    """The gateway's metric families, registered in one registry, and the sink that counts outcomes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        if multiprocess_dir() is not None and values.ValueClass is values.MutexValue:
            # prometheus_client picks file-backed values when it is imported; a supervisor may set the
            # directory after that import (before forking), so pick again before the first metric exists.
            values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "Requests answered, by project, operation, decision (forwarded, preflight or the error key) "
            "and status",
            ["project", "operation", "decision", "status"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Time Voucherify took to answer forwarded requests",
            ["project", "operation"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time the gateway took to answer, upstream included",
            ["project", "decision"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Upstream calls that failed, by kind (timeout, unavailable)",
            ["project", "operation", "kind"],
            registry=r,
        )
        self.limit_store_errors = Counter(
            "gateway_limit_store_errors",
            "Rate-limit checks that failed because the limit store was unreachable or too slow",
            ["project"],
            registry=r,
        )
        self.fail_open = Counter(
            "gateway_rate_limit_fail_open",
            "Requests let through unlimited because the limit store failed and on_storage_error is allow",
            ["project"],
            registry=r,
        )
        self.limit_remembered = Counter(
            "gateway_rate_limit_remembered",
            "429s answered from a per-IP refusal the store gave a moment ago, without a store call",
            ["project"],
            registry=r,
        )
        self.idempotency = Counter(
            "gateway_idempotency",
            "Requests with an Idempotency-Key, by what it did (kept, released, lost, replayed, in_flight, "
            "reused, invalid, required, unavailable)",
            ["project", "operation", "result"],
            registry=r,
        )
        self.failed_codes = Counter(
            "gateway_failed_codes",
            "Unknown codes charged to clients' failed-code budgets (rate_limit.failed_codes)",
            ["project"],
            registry=r,
        )
        self.failed_code_refusals = Counter(
            "gateway_failed_code_refusals",
            "Requests refused with too_many_failed_codes: the client's failed-code budget was spent",
            ["project"],
            registry=r,
        )
        self.reloads = Counter(
            "gateway_policy_reloads",
            "Policy reloads, by result (applied, rejected)",
            ["result"],
            registry=r,
        )
        self.cache_lookups = Counter(
            "gateway_cache_lookups",
            "Reads of cached operations, by result: hit (answered from the cache), miss (called "
            "Voucherify) or shared (waited for an identical call in flight)",
            ["project", "operation", "result"],
            registry=r,
        )
        self.quota_refusals = Counter(
            "gateway_upstream_quota_refusals",
            "Requests answered 503 upstream_quota_exhausted without calling Voucherify, by reason: quota "
            "(the project's upstream_quota is spent) or hold_off (Voucherify answered 429 shortly before)",
            ["project", "reason"],
            registry=r,
        )
        self.upstream_429s = Counter(
            "gateway_upstream_429",
            "Answers 429 from Voucherify (each starts or extends the project's hold-off)",
            ["project"],
            registry=r,
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight",
            "Requests being handled now",
            registry=r,
            multiprocess_mode="livesum",
        )
        for result in ("applied", "rejected"):
            self.reloads.labels(result)  # both series exist from the start, at 0
        # The labelled children per label set: `labels()` takes a lock and builds a tuple each call. Label
        # values are bounded (projects x operations x decisions x statuses), so is this cache.
        self._series: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}
        self._children: dict[tuple[object, ...], Any] = {}  # (metric, *label values): its child

    def _child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, made once per label set."""
        key = (metric, *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def reloaded(self, applied: bool) -> None:
        """A policy reload was applied, or rejected (the running policy stayed)."""
        self.reloads.labels("applied" if applied else "rejected").inc()

    def account(self, batch: Sequence[Outcome], in_flight: int) -> None:
        self.in_flight.set(in_flight)
        counted: dict[Any, int] = {}  # each counter's child: what this batch adds to it

        def add(child: Any, amount: int = 1) -> None:
            counted[child] = counted.get(child, 0) + amount

        children = self._children
        for outcome in batch:
            project = outcome.project or UNKNOWN  # only ever a project name of the policy
            operation = outcome.operation if outcome.operation in OPERATIONS else UNKNOWN
            decision = outcome.decision if outcome.decision in _DECISIONS else UNKNOWN
            key = (project, operation, decision, outcome.status)
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = (
                    self.requests.labels(project, operation, decision, str(outcome.status)),
                    self.request_duration.labels(project, decision),
                )
            requests, request_duration = series
            counted[requests] = counted.get(requests, 0) + 1  # add(requests), inline: every request
            request_duration.observe(outcome.duration_ms / 1000)
            if outcome.upstream_ms is not None:
                upstream = children.get((self.upstream_duration, project, operation))
                if upstream is None:
                    upstream = self._child(self.upstream_duration, project, operation)
                upstream.observe(outcome.upstream_ms / 1000)
            kind = UPSTREAM_ERROR_KINDS.get(outcome.decision)
            if kind is not None:
                add(self._child(self.upstream_errors, project, operation, kind))
            if outcome.idempotency in _IDEMPOTENCY_RESULTS:
                add(self._child(self.idempotency, project, operation, outcome.idempotency))
            if outcome.cache is not None:
                add(self._child(self.cache_lookups, project, operation, outcome.cache))
            if outcome.quota_refusal is not None:
                add(self._child(self.quota_refusals, project, outcome.quota_refusal))
            if outcome.upstream_429:
                add(self._child(self.upstream_429s, project))
            if outcome.limit_store_error:
                add(self._child(self.limit_store_errors, project))
                if outcome.decision != ErrorKey.RATE_LIMIT_UNAVAILABLE.value:
                    add(self._child(self.fail_open, project))
            if outcome.limit_remembered:
                add(self._child(self.limit_remembered, project))
            if outcome.unknown_codes:
                add(self._child(self.failed_codes, project), outcome.unknown_codes)
            if outcome.decision == ErrorKey.TOO_MANY_FAILED_CODES.value:
                add(self._child(self.failed_code_refusals, project))
        for child, count in counted.items():  # one inc (a lock) per series and batch
            child.inc(count)
