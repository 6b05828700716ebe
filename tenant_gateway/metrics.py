"""``/metrics``: the gateway's numbers in the Prometheus text format (``prometheus_client``).

The request path counts in plain ints — ``GateCounts`` and ``Latencies`` (``observations.py``),
the key resolver's hits and misses, the services' flush results, the webhook outcomes — and
nothing here runs until a scrape reads them, through a custom collector: a call costs a
dictionary update, never a metric's lock. No label holds a tenant id; plan names come from the
catalogue, reasons from the problem codes.

Under several worker processes a scrape reaches one of them, so the numbers go through
prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set before the workers
start, as ``serve --workers N`` does): each worker writes what its counts grew by into its own
files in that directory every ``usage_flush_interval`` seconds, before each scrape it answers,
and at shutdown; a scrape answers the sum over every file, of workers alive or gone. So the
answering worker's own counts are exact and the others' at most one interval old. Gauges are
the sum (the maximum, for the flush lag) over live workers.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    values,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tenant_gateway import problems
from tenant_gateway.admin.auth import OperatorAuth
from tenant_gateway.background import repeat
from tenant_gateway.breaker import Breaker, BreakerState
from tenant_gateway.exceptions import Problem, Refusal
from tenant_gateway.keys import KEY_PREFIX, extract_api_key
from tenant_gateway.observations import GateCounts, Latencies
from tenant_gateway.quota import CounterStore
from tenant_gateway.redis.cluster_counters import ClusterCounters
from tenant_gateway.redis.counters import RedisCounters
from tenant_gateway.services import Services

__all__ = ["MetricsEndpoint", "Sources", "families", "multiprocess"]

_GAUGE_MODES = {
    "tenant_gateway_breaker_state": "livesum",  # workers in each state
    "tenant_gateway_usage_flush_lag_seconds": "livemax",
    "tenant_gateway_key_cache_entries": "livesum",
    "tenant_gateway_postgres_connections": "livesum",
    "tenant_gateway_postgres_connections_max": "livesum",
}
"""How prometheus_client's multiprocess mode combines each gauge over live workers."""


def multiprocess() -> bool:
    """Whether prometheus_client runs in multiprocess mode in this process (it decides once,
    when it is first imported, from ``PROMETHEUS_MULTIPROC_DIR``)."""
    return values.ValueClass is not values.MutexValue


@dataclass(frozen=True, slots=True)
class Sources:
    """Where the numbers are kept."""

    gate: GateCounts
    decisions: Latencies
    services: Services


def _breakers(counters: CounterStore) -> list[Breaker]:
    """The counter store's circuit breakers: one for a Redis server (``redis``), one per primary
    of a cluster (``redis HOST:PORT``), none in memory."""
    if isinstance(counters, ClusterCounters):
        return [counters.nodes.breaker(node) for node in counters.nodes.primaries()]
    if isinstance(counters, RedisCounters):
        return [counters.breaker]
    return []


def _counter(
    name: str, doc: str, labels: list[str], counts: Iterable[tuple[Iterable[str], int]]
) -> Metric:
    family = CounterMetricFamily(name, doc, labels=labels)
    for label_values, count in counts:
        family.add_metric(list(label_values), count)
    return family


def families(sources: Sources) -> list[Metric]:
    """Every metric of the gateway, read from ``sources`` now."""
    gate, services = sources.gate, sources.services
    resolver, decisions = services.resolver, sources.decisions
    cumulative, buckets = 0, []
    for bound, count in zip((*decisions.bounds, math.inf), decisions.counts, strict=True):
        cumulative += count
        le = floatToGoString(bound)  # type: ignore[no-untyped-call]
        buckets.append((le, float(cumulative)))
    breaker = GaugeMetricFamily(
        "tenant_gateway_breaker_state",
        "1 for the state each Redis circuit breaker is in (several workers: how many are in it).",
        labels=["breaker", "state"],
    )
    for circuit in _breakers(services.counters):
        for state in BreakerState:
            breaker.add_metric([circuit.name, state.value], float(state is circuit.state))
    metrics = [
        _counter(
            "tenant_gateway_calls_admitted",
            "Calls the gate admitted to the wrapped app, by plan.",
            ["plan"],
            (((plan,), calls) for plan, calls in gate.admitted.items()),
        ),
        _counter(
            "tenant_gateway_calls_refused",
            "Calls the gate refused, by reason (the problem code) and plan ('' before the plan"
            " is known).",
            ["reason", "plan"],
            sorted(gate.refused.items()),
        ),
        HistogramMetricFamily(
            "tenant_gateway_quota_decision_seconds",
            "Time the counter store took to answer a monthly quota decision.",
            buckets=buckets,
            sum_value=decisions.total,
        ),
        breaker,
        GaugeMetricFamily(
            "tenant_gateway_usage_flush_lag_seconds",
            "Seconds since usage, ledger and key use were last all flushed.",
            value=max(0.0, services.clock() - services.flushed_at),
        ),
        _counter(
            "tenant_gateway_usage_flush_failures",
            "Usage flush steps that failed, by step.",
            ["step"],
            (((step,), failed) for step, failed in services.flush_failures.items()),
        ),
        _counter(
            "tenant_gateway_key_cache_hits",
            "API keys answered from the key cache.",
            [],
            [((), resolver.hits)],
        ),
        _counter(
            "tenant_gateway_key_cache_misses",
            "API keys looked up in the tenant directory (not cached, or expired).",
            [],
            [((), resolver.misses)],
        ),
        GaugeMetricFamily(
            "tenant_gateway_key_cache_entries", "Keys in the key cache.", value=len(resolver)
        ),
        _counter(
            "tenant_gateway_webhook_deliveries",
            "Quota webhook deliveries, by outcome: delivered, failed (every attempt), dropped"
            " (a target the policy refuses).",
            ["outcome"],
            (((outcome,), n) for outcome, n in services.events.deliveries.items()),
        ),
    ]
    if services.database is not None:
        opened, idle, most = services.database.pool_connections()
        connections = GaugeMetricFamily(
            "tenant_gateway_postgres_connections",
            "Connections of the PostgreSQL pool, by state.",
            labels=["state"],
        )
        connections.add_metric(["busy"], opened - idle)
        connections.add_metric(["idle"], idle)
        metrics.append(connections)
        metrics.append(
            GaugeMetricFamily(
                "tenant_gateway_postgres_connections_max",
                "Connections the PostgreSQL pool may open.",
                value=most,
            )
        )
    return metrics


class _Collector(Collector):
    def __init__(self, sources: Sources) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        yield from families(self._sources)


_Key = tuple[str, tuple[tuple[str, str], ...]]
_shared_values: dict[_Key, values.ValueClass] = {}
"""This process's values in the multiprocess files, one per sample: gateways in one process
add to the same ones."""


class _Publisher:
    """This process's numbers into its multiprocess files: counters and histogram buckets by
    what they grew since the last time, gauges as they are."""

    def __init__(self) -> None:
        self._sent: dict[_Key, float] = {}

    def publish(self, metrics: Iterable[Metric]) -> None:
        for metric in metrics:
            below = 0.0  # the cumulative count of the histogram's buckets so far
            for sample in metric.samples:
                value = sample.value
                if metric.type == "gauge":
                    self._value(metric, sample.name, sample.labels).set(value)
                    continue
                if sample.name.endswith("_count"):
                    continue  # a histogram's: its buckets' sum, which the reader adds up
                if sample.name.endswith("_bucket"):  # stored per bucket, not cumulative
                    value, below = value - below, value
                key: _Key = (sample.name, tuple(sorted(sample.labels.items())))
                grown = value - self._sent.get(key, 0.0)
                if grown:
                    self._value(metric, sample.name, sample.labels).inc(grown)
                    self._sent[key] = value

    @staticmethod
    def _value(metric: Metric, name: str, labels: dict[str, str]) -> values.ValueClass:
        key: _Key = (name, tuple(sorted(labels.items())))
        value = _shared_values.get(key)
        if value is None:
            value = _shared_values[key] = values.ValueClass(
                metric.type,
                metric.name,
                name,
                list(labels),
                list(labels.values()),
                metric.documentation,
                multiprocess_mode=_GAUGE_MODES.get(metric.name, ""),
            )
        return value


class MetricsEndpoint:
    """The ASGI app at ``metrics_path``: GET (or HEAD) answers every metric, behind an operator
    token when ``operators`` is given."""

    def __init__(self, sources: Sources, operators: OperatorAuth | None, interval: float) -> None:
        self._sources = sources
        self._operators = operators
        self._interval = interval
        self.registry = CollectorRegistry(auto_describe=False)
        self._publisher: _Publisher | None = None
        self._task: asyncio.Task[None] | None = None
        if multiprocess():
            self._publisher = _Publisher()
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        else:
            self.registry.register(_Collector(sources))
            for collector in (ProcessCollector, PlatformCollector, GCCollector):
                collector(registry=self.registry)

    def publish(self) -> None:
        """Under multiprocess mode, write this process's numbers to its files now."""
        if self._publisher is not None:
            self._publisher.publish(families(self._sources))

    def start(self) -> None:
        if self._publisher is not None and self._task is None:
            self._task = asyncio.create_task(
                repeat("publishing metrics", self._publish, self._interval, wait_first=True)
            )

    async def _publish(self) -> None:
        self.publish()

    async def stop(self) -> None:
        """The last numbers to the files; this process's live gauges leave the sums."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._publisher is not None:
            self.publish()
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    def _authorize(self, headers: Headers) -> None:
        if self._operators is None:
            return
        token = extract_api_key(headers)
        if token is None:
            raise problems.operator_token_required()
        if token.startswith(KEY_PREFIX):
            raise problems.forbidden("A tenant key may not read the metrics.")
        self._operators.verify(token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        try:
            if scope["method"] not in ("GET", "HEAD"):
                raise problems.method_not_allowed("GET, HEAD")
            self._authorize(headers)
        except Problem as problem:
            await problems.problem_response(problem)(scope, receive, send)
            return
        except Refusal as refusal:  # two credentials that differ
            await problems.problem_response(problems.for_refusal(refusal))(scope, receive, send)
            return
        self.publish()
        encode, content_type = choose_encoder(headers.get("accept", ""))
        response = Response(encode(self.registry), headers={"Content-Type": content_type})
        await response(scope, receive, send)
