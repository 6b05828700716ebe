"""Quota threshold events: 80 % and 100 % of the monthly quota, once per tenant and period.

The quota decision returns the call's position in the period (``used``), and each position is
handed to exactly one request, so the request that reaches the 80 % or 100 % mark knows it —
on any worker — with no extra round trip. The ledger's outbox claim makes the event happen
once even if a Redis loss replays the crossing. Delivery (the Python hook, then a signed
webhook POST with retries and backoff) runs in the background, never on the request path.
Each attempt goes through ``PinnedTransport``: to an address the ``WebhookPolicy`` allows, no
redirects followed; a target the policy refuses is dropped with a log line, not retried.

A receiver is the tenant's to write, so it is trusted with nothing: only the status line and
headers of its answer are read (the body never is, whatever its size), an attempt ends after
``attempt_timeout`` seconds whatever the receiver sends meanwhile, and one tenant's deliveries
run one at a time (``deliveries_per_tenant``), in the order of its events. ``changes`` limits
how often a tenant may set its webhook (``PUT /{id}/webhook``, 10 a minute per tenant and
process), each setting costing a name lookup.

Webhook requests carry ``Tenant-Gateway-Signature: t=<unix time>,v1=<hex>``, where ``v1`` is
HMAC-SHA256 of ``"<t>.<body>"`` with the tenant's webhook secret (as Stripe signs its events).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import inspect
import json
import logging
import math
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import httpx

from tenant_gateway.client_limits import ClientLimiter, limiter_for
from tenant_gateway.clock import Clock, Sleep, format_timestamp
from tenant_gateway.directory import TenantDirectory
from tenant_gateway.exceptions import StoreUnavailable, WebhookTargetRefused
from tenant_gateway.ledger import Delivery, DeliveryOutcome, UsageLedger
from tenant_gateway.netpolicy import TENANT_EXTENSION, PinnedTransport, WebhookPolicy

__all__ = [
    "DELIVERY_OUTCOMES",
    "THRESHOLDS",
    "EventDispatcher",
    "QuotaEvent",
    "QuotaHook",
    "sign_webhook",
]

logger = logging.getLogger("tenant_gateway.events")

THRESHOLDS = (80, 100)
DELIVERY_OUTCOMES = ("delivered", "failed", "dropped")
"""How a webhook delivery ends: answered 2xx; failed, every attempt; dropped, its target one
the policy refuses (or its URL none at all)."""


@dataclass(frozen=True, slots=True)
class QuotaEvent:
    tenant_id: str
    period: str
    threshold: int
    """Percent of the monthly quota reached: 80 or 100."""
    used: int
    limit: int
    at: str

    @property
    def id(self) -> str:
        return f"{self.tenant_id}:{self.period}:{self.threshold}"

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "type": "quota.threshold", **asdict(self)}


QuotaHook = Callable[[QuotaEvent], Awaitable[None] | None]


def sign_webhook(secret: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def threshold_marks(limit: int) -> dict[int, tuple[int, ...]]:
    """Call count → the thresholds that call reaches (``ceil(limit × t%)``; 80 and 100 meet
    on a tiny limit)."""
    marks: dict[int, tuple[int, ...]] = {}
    if limit > 0:
        for threshold in THRESHOLDS:
            mark = math.ceil(limit * threshold / 100)
            marks[mark] = (*marks.get(mark, ()), threshold)
    return marks


class EventDispatcher:
    def __init__(
        self,
        ledger: UsageLedger,
        directory: TenantDirectory,
        clock: Clock,
        *,
        hook: QuotaHook | None = None,
        policy: WebhookPolicy | None = None,
        verify: ssl.SSLContext | bool = True,
        attempts: int = 5,
        first_backoff: float = 0.5,
        timeout: float = 5.0,
        attempt_timeout: float = 10.0,
        deliveries_per_tenant: int = 1,
        change_rate: str | None = "10/minute",
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._ledger = ledger
        self._directory = directory
        self._clock = clock
        self._hook = hook
        self.policy = policy or WebhookPolicy()
        self._verify = verify  # tests trust their own certificate authority
        self._attempts = attempts
        self._first_backoff = first_backoff
        self._timeout = timeout  # each connect, write or read
        self._attempt_timeout = attempt_timeout  # the whole attempt, name lookup included
        self._deliveries_per_tenant = deliveries_per_tenant
        self.changes: ClientLimiter | None = limiter_for(change_rate, "webhook_change_rate", clock)
        """Webhook settings per tenant id (in process: each process resolves its own)."""
        self._sleep = sleep  # the backoff's waits (tests record the schedule without waiting)
        self._queue: asyncio.Queue[QuotaEvent] = asyncio.Queue(maxsize=10_000)
        self._deliveries: set[asyncio.Task[None]] = set()
        self._marks: dict[int, dict[int, tuple[int, ...]]] = {}
        self.deliveries: dict[str, int] = dict.fromkeys(DELIVERY_OUTCOMES, 0)
        """Webhook deliveries by how they ended (``/metrics``)."""
        self._turns: dict[str, tuple[asyncio.Semaphore, int]] = {}
        """Per tenant with deliveries in flight or waiting: its slots and how many hold or
        wait for one."""

    def observe(self, tenant_id: str, period: str, used: int, limit: int | None) -> None:
        """Called after each admitted call; queues an event when a mark is reached. No I/O."""
        if limit is None:
            return
        marks = self._marks.get(limit)
        if marks is None:
            marks = self._marks[limit] = threshold_marks(limit)
        for threshold in marks.get(used, ()):
            event = QuotaEvent(
                tenant_id,
                period,
                threshold,
                used,
                limit,
                format_timestamp(datetime.fromtimestamp(self._clock(), UTC)),
            )
            try:
                self._queue.put_nowait(event)
            except asyncio.QueueFull:
                logger.error("event queue full, dropping %s", event.id)

    async def run(self) -> None:
        """Claim and deliver queued events until cancelled."""
        transport = PinnedTransport(self.policy, verify=self._verify)
        async with httpx.AsyncClient(
            transport=transport, timeout=self._timeout, follow_redirects=False, trust_env=False
        ) as client:
            while True:
                event = await self._queue.get()
                try:
                    await self._claim_and_deliver(client, event)
                finally:
                    self._queue.task_done()

    async def _claim_and_deliver(self, client: httpx.AsyncClient, event: QuotaEvent) -> None:
        try:
            claimed = await self._ledger.claim_event(
                (event.tenant_id, event.period),
                event.threshold,
                datetime.fromtimestamp(self._clock(), UTC),
            )
        except StoreUnavailable as exc:
            logger.warning("cannot claim %s yet: %s", event.id, exc)
            await asyncio.sleep(1.0)
            self._queue.put_nowait(event)
            return
        if claimed:
            task = asyncio.create_task(self._deliver(client, event))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def close(self) -> None:
        """Abandon deliveries still in flight (their outbox rows stay undelivered)."""
        for task in list(self._deliveries):
            task.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)
        self.policy.close()

    async def drain(self) -> None:
        """Wait until every queued event is claimed and its delivery finished."""
        await self._queue.join()
        await asyncio.gather(*self._deliveries, return_exceptions=True)

    @asynccontextmanager
    async def _turn(self, tenant_id: str) -> AsyncIterator[None]:
        """One of the tenant's delivery slots, first come first served."""
        slots, users = self._turns.get(tenant_id) or (
            asyncio.Semaphore(self._deliveries_per_tenant),
            0,
        )
        self._turns[tenant_id] = (slots, users + 1)
        try:
            async with slots:
                yield
        finally:
            slots, users = self._turns.pop(tenant_id)
            if users > 1:
                self._turns[tenant_id] = (slots, users - 1)

    async def _deliver(self, client: httpx.AsyncClient, event: QuotaEvent) -> None:
        async with self._turn(event.tenant_id):
            await self._deliver_now(client, event)

    async def _deliver_now(self, client: httpx.AsyncClient, event: QuotaEvent) -> None:
        if self._hook is not None:
            try:
                result = self._hook(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("quota hook failed for %s", event.id)
        target = await self._directory.webhook_target(event.tenant_id)
        if target is None:
            await self._finish(event, "no_webhook", 0, None)
            return
        url, secret = target
        body = json.dumps(event.to_json(), separators=(",", ":")).encode()
        delay = self._first_backoff
        for attempt in range(1, self._attempts + 1):
            timestamp = int(self._clock())
            headers = {
                "Content-Type": "application/json",
                "Tenant-Gateway-Event-Id": event.id,
                "Tenant-Gateway-Signature": sign_webhook(secret, timestamp, body),
            }
            try:
                async with asyncio.timeout(self._attempt_timeout):
                    async with client.stream(
                        "POST",
                        url,
                        content=body,
                        headers=headers,
                        extensions={TENANT_EXTENSION: event.tenant_id},
                    ) as response:
                        status = response.status_code  # leaving unread closes the connection
                if status < 300:
                    self.deliveries["delivered"] += 1
                    await self._finish(event, "delivered", attempt, None)
                    return
                error = f"HTTP {status}"  # a redirect too: never followed
            except (WebhookTargetRefused, httpx.InvalidURL) as exc:
                logger.warning("webhook %s dropped: %s", event.id, exc)
                self.deliveries["dropped"] += 1
                await self._finish(event, "dropped", attempt, str(exc))
                return
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            except TimeoutError:
                error = f"not answered within {self._attempt_timeout:g} s"
            logger.warning("webhook %s attempt %d failed: %s", event.id, attempt, error)
            if attempt < self._attempts:
                await self._sleep(delay)
                delay *= 2
        self.deliveries["failed"] += 1
        await self._finish(event, "failed", self._attempts, error)

    async def _finish(
        self, event: QuotaEvent, outcome: DeliveryOutcome, attempts: int, error: str | None
    ) -> None:
        """Record the outcome for the tenant's view; an outage loses the record, not the event."""
        delivery = Delivery(
            event.period,
            event.threshold,
            datetime.fromisoformat(event.at),
            outcome,
            attempts,
            datetime.fromtimestamp(self._clock(), UTC),
            error,
        )
        try:
            await self._ledger.finish_event(event.tenant_id, delivery)
        except StoreUnavailable as exc:
            logger.warning("outcome of %s not recorded: %s", event.id, exc)
