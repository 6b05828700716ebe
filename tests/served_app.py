"""A gateway-wrapped framework app for a server a test starts (daphne, uvicorn, hypercorn):
``<server> tests.served_app:application``, configured by the environment the test gives it.

TG_TEST_FRAMEWORK: a key of ``framework_apps.APPS``; TG_DATABASE_URL, TG_REDIS_URL,
TG_REDIS_KEY_PREFIX: the stores (unset: memory); TG_FLUSH_INTERVAL: seconds;
TG_MAX_BODY_BYTES: the wrapped app's body limit.
"""

from __future__ import annotations

import os

from tenant_gateway import TenantGateway

from .framework_apps import APPS, OPEN_PLAN

application = TenantGateway(
    APPS[os.environ["TG_TEST_FRAMEWORK"]](),
    database_url=os.environ.get("TG_DATABASE_URL"),
    redis_url=os.environ.get("TG_REDIS_URL"),
    redis_key_prefix=os.environ.get("TG_REDIS_KEY_PREFIX", "tg:"),
    usage_flush_interval=float(os.environ.get("TG_FLUSH_INTERVAL", "1")),
    max_body_bytes=int(os.environ.get("TG_MAX_BODY_BYTES", str(10 * 1024 * 1024))),
    plans=OPEN_PLAN,
)
