"""The gateway's background work: a step repeated forever, which a failure never stops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from tenant_gateway.exceptions import StoreUnavailable

__all__ = ["repeat"]

logger = logging.getLogger("tenant_gateway")


async def repeat(
    what: str, step: Callable[[], Awaitable[object]], interval: float, *, wait_first: bool
) -> None:
    """Run ``step`` every ``interval`` seconds until cancelled (after the first wait when
    ``wait_first``). A store that is away postpones it, with a warning; any other failure is
    logged in full; either way the next round comes."""
    if wait_first:
        await asyncio.sleep(interval)
    while True:
        try:
            await step()
        except StoreUnavailable as exc:
            logger.warning("%s postponed: %s", what, exc)
        except Exception:
            logger.exception("%s failed", what)
        await asyncio.sleep(interval)
