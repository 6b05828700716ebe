"""The server's log: API keys kept out of it, as text or as JSON lines.

A client may send its key in the URL (``?api_key=tk_…``), and uvicorn's access log prints the
whole request line. ``serve`` runs uvicorn with ``log_config()``: its default configuration with
``RedactKeys`` on every handler, so each record (access lines, the websocket lines uvicorn logs
on ``uvicorn.error``, the gateway's own warnings) has any ``tk_`` key replaced by
``tk_…redacted`` before it is written. ``log_config("json")`` writes each record as one JSON
object a line (``JsonFormatter``), for a log pipeline to read without parsing text.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from uvicorn.config import LOGGING_CONFIG

__all__ = ["LOG_FORMATS", "REDACTED", "JsonFormatter", "RedactKeys", "log_config", "redact_keys"]

LOG_FORMATS = ("text", "json")

REDACTED = "tk_…redacted"
# The prefix, raw or with its underscore percent-encoded, and the URL-safe run that follows it
# (at least one character: so a line already redacted stays as it is).
_KEY = re.compile(r"tk(?:_|%5[fF])[A-Za-z0-9_%\-]+")


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


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``;
    an access line adds ``client``, ``method``, ``path`` (with its query), ``http_version`` and
    ``status``; a record with an exception adds its ``exception`` text. Every string is
    redacted here too, whatever filter ran before."""

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, object] = {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_keys(record.getMessage()),
        }
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            for name, value in zip(_ACCESS_FIELDS, args, strict=True):
                entry[name] = redact_keys(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exception"] = redact_keys(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


_ACCESS_FIELDS = ("client", "method", "path", "http_version", "status")
"""What uvicorn passes an access record, in order (``'%s - "%s %s HTTP/%s" %d'``)."""


def log_config(log_format: str = "text") -> dict[str, Any]:
    """uvicorn's default logging configuration, every handler filtered through ``RedactKeys``
    and the gateway's own records (which reach the root logger) written by the same handler as
    uvicorn's; ``"json"``: every line a JSON object. A dictConfig, so each worker process
    installs it too."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}")
    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact_keys": {"()": f"{__name__}.RedactKeys"}}
    for handler in config["handlers"].values():
        handler["filters"] = ["redact_keys"]
    if log_format == "json":
        config["formatters"] = {
            name: {"()": f"{__name__}.JsonFormatter"} for name in config["formatters"]
        }
    config["root"] = {"handlers": ["default"], "level": "WARNING"}  # what Python prints anyway
    return config
