"""Keep API keys out of the server's log.

A client may send its key in the URL (``?api_key=tk_…``), and uvicorn's access log prints the
whole request line. ``serve`` runs uvicorn with ``log_config()``: its default configuration with
``RedactKeys`` on every handler, so each record (access lines, and the websocket lines uvicorn
logs on ``uvicorn.error``) has any ``tk_`` key replaced by ``tk_…redacted`` before it is written.
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

from uvicorn.config import LOGGING_CONFIG

__all__ = ["REDACTED", "RedactKeys", "log_config", "redact_keys"]

REDACTED = "tk_…redacted"
# The prefix, raw or with its underscore percent-encoded, and whatever URL-safe run follows it.
_KEY = re.compile(r"tk(?:_|%5[fF])[A-Za-z0-9_%\-]*")


def redact_keys(text: str) -> str:
    return _KEY.sub(REDACTED, text) if "tk" in text else text


class RedactKeys(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_keys(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(
                redact_keys(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's default logging configuration, every handler filtered through ``RedactKeys``
    (a dictConfig, so each worker process installs it too)."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact_keys": {"()": f"{__name__}.RedactKeys"}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact_keys"]
    return config
