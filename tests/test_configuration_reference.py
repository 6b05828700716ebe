"""The configuration reference (``docs/configuration.md``) is generated from the code and names
every setting the code has, and nothing else; each setting's flag, variable and keyword argument
agree (``tenant_gateway/options.py``)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tenant_gateway import Settings, TenantGateway
from tenant_gateway.cli import _parser
from tenant_gateway.option import FromEnvironment, as_text
from tenant_gateway.options import OPTIONS, for_command, from_environment, to_environment, values
from tenant_gateway.reference import commands, render
from tenant_gateway.serve import build_app

from .conftest import JWT_SECRET

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "configuration.md"
PACKAGE = REPO / "tenant_gateway"

# A command line that parses, per command (its required flags).
ARGV = {
    "serve": ["serve"],
    "migrate": ["migrate"],
    "billing close": ["billing", "close", "--period", "2026-01"],
    "export": ["export", "--tenant", "tenant_x"],
    "import": ["import", "--tenant", "tenant_x"],
    "token": ["token", "--sub", "alice"],
}

# Each variable set to something other than its default: (text, the value it gives).
SAMPLES: dict[str, tuple[str, Any]] = {
    "TG_DATABASE_URL": ("postgresql://gw@127.0.0.1:1/app", "postgresql://gw@127.0.0.1:1/app"),
    "TG_REDIS_URL": ("redis://127.0.0.1:1/3", "redis://127.0.0.1:1/3"),
    "TG_REDIS_KEY_PREFIX": ("gw2:", "gw2:"),
    "TG_PLANS": ("PLANS_FILE", "PLANS_FILE"),
    "TG_ADMIN_JWT_SECRET": (JWT_SECRET, JWT_SECRET),
    "TG_ADMIN_JWT_MAX_LIFETIME": ("12h", 43200.0),
    "TG_ALLOW_SIGNUP": ("off", False),
    "TG_SIGNUP_RATE": ("5/hour", "5/hour"),
    "TG_SIGNUP_PLANS": ("free, professional", ["free", "professional"]),
    "TG_AUTH_FAILURE_RATE": ("unlimited", "unlimited"),
    "TG_PLAN_CHANGE_RATE": ("2/day", "2/day"),
    "TG_FORWARDED_ALLOW_IPS": ("10.0.0.1", "10.0.0.1"),
    "TG_KEY_CACHE_TTL": ("0.5", 0.5),
    "TG_KEY_CACHE_LONG_TTL": ("30", 30.0),
    "TG_KEY_CACHE_SIZE": ("500", 500),
    "TG_FLUSH_INTERVAL": ("0.25", 0.25),
    "TG_WEBHOOK_ALLOWED_NETWORKS": ("10.0.0.0/8,fd00::/8", ["10.0.0.0/8", "fd00::/8"]),
    "TG_TRANSFER_IDLE_TIMEOUT": ("3", 3.0),
    "TG_TRANSFER_MIN_RATE": ("0", 0),
    "TG_TRANSFER_MAX_DURATION": ("60", 60.0),
    "TG_METRICS_PATH": ("/stats", "/stats"),
    "TG_CONSOLE_PATH": ("/dashboard", "/dashboard"),
    "TG_CONSOLE_SECRET": (
        "console-secret-for-tests-0123456789",
        "console-secret-for-tests-0123456789",
    ),
    "TG_METRICS_REQUIRE_OPERATOR": ("yes", True),
    "TG_LOG_FORMAT": ("json", "json"),
}


@pytest.fixture
def samples(tmp_path: Path) -> dict[str, tuple[str, Any]]:
    plans = tmp_path / "plans.json"
    plan = {"max_users": 1, "monthly_calls": 1, "burst_per_second": 1, "price_cents": 0}
    plans.write_text(json.dumps({"plans": {"free": plan, "professional": plan}}))
    return {**SAMPLES, "TG_PLANS": (str(plans), str(plans))}


def test_the_committed_reference_is_the_generated_one() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/configuration.md is stale: run .venv/bin/python scripts/docs_pages.py"
    )


def _parsers() -> Iterator[argparse.ArgumentParser]:
    top = _parser(environ={})
    yield top
    for _, _, parser in commands(top):
        yield parser


def _section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_the_reference_names_every_setting_of_the_code_and_nothing_else() -> None:
    """Keyword arguments, ``Settings`` fields, flags of every command and ``TG_*`` variables:
    each one the code has is in the committed reference, and each one there is in the code."""
    text = DOC.read_text(encoding="utf-8")
    keywords = set(inspect.signature(TenantGateway).parameters) - {"app", "settings"}
    fields = {field.name for field in dataclasses.fields(Settings)}
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", _section(text, "Settings"), re.M))
    assert documented == keywords | fields

    flags = {flag for parser in _parsers() for a in parser._actions for flag in a.option_strings}
    assert set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text)) == {
        flag for flag in flags if flag.startswith("--")
    }

    read = {
        name
        for path in PACKAGE.rglob("*.py")
        for name in re.findall(r"\bTG_[A-Z0-9_]+", path.read_text(encoding="utf-8"))
    }
    variables = set(
        re.findall(r"^\| `(TG_[A-Z0-9_]+)` \|", _section(text, "Environment variables"), re.M)
    )
    assert variables == read
    assert set(re.findall(r"\bTG_[A-Z0-9_]+", text)) == read


def _same(value: Any) -> Any:
    """A default as the other spelling of it holds it (a list or a tuple, a frozenset)."""
    if isinstance(value, list | tuple | frozenset):
        return tuple(sorted(value)) if isinstance(value, frozenset) else tuple(value)
    return value


def test_every_default_reads_back_and_settings_agree_with_the_keyword_arguments() -> None:
    """The text a flag defaults to gives the keyword argument's default, and ``Settings``
    holds the same defaults as ``TenantGateway`` (the constructor fills one from the other)."""
    held = {field.name: field.default for field in dataclasses.fields(Settings)}
    held["plans"] = None  # a default_factory (the default plans), which plans=None selects
    for option in OPTIONS:
        if option.target == "keyword" and option.name in held:
            assert _same(held[option.name]) == _same(option.default), option.name
        if option.parse is None:
            continue
        if option.target == "serve":  # a text default: it must read
            option.read(option.default_text)
        else:  # the Python default, spelled as text, reads back as itself
            assert _same(option.read(as_text(option.default))) == _same(option.default), option.name


def test_each_flag_defaults_to_its_variable_in_every_command(
    samples: dict[str, tuple[str, Any]],
) -> None:
    for option in OPTIONS:
        if option.env is None:
            continue
        text, value = samples[option.env]
        assert option.flag is not None
        for command in option.commands:
            args = _parser(environ={option.env: text}).parse_args(ARGV[command])
            given = getattr(args, option.name)
            assert given == text and isinstance(given, FromEnvironment), (option.env, command)
            assert values(args, command)[option.name] == value, (option.env, command)


def test_the_workers_build_their_gateway_from_every_variable(
    samples: dict[str, tuple[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    keyword = {o.env for o in OPTIONS if o.env is not None and o.target == "keyword"}
    assert set(samples) == {o.env for o in OPTIONS if o.env is not None}, (
        "a variable lacks a sample"
    )
    environ = {name: samples[name][0] for name in keyword if name is not None}
    for name, text in environ.items():
        monkeypatch.setenv(name, text)
    settings = build_app().settings
    for option in OPTIONS:
        if option.env not in keyword:
            continue
        held = getattr(settings, option.name)
        expected = samples[option.env][1]
        if option.name == "plans":
            assert list(held) == ["free", "professional"]
        elif option.name in ("signup_plans",):
            assert held == frozenset(expected)
        else:
            assert _same(held) == _same(expected), option.name


def test_serve_hands_every_flag_to_its_workers(samples: dict[str, tuple[str, Any]]) -> None:
    """Flags → ``to_environment`` → what a worker reads: the values ``serve`` checked."""
    argv = ["serve"]
    for option in for_command("serve"):
        assert option.flag is not None
        if option.env is None or option.target != "keyword":
            continue
        text = samples[option.env][0]
        if option.switch is not None:
            argv.append(option.flag)  # the switches' samples are what the flag stands for
        elif option.repeatable:
            for item in text.split(","):
                argv += [option.flag, item]
        else:
            argv += [option.flag, text]
    args = _parser(environ={}).parse_args(argv)
    checked = values(args, "serve")
    environ: dict[str, str] = {"TG_SOMETHING_ELSE": "kept"}
    to_environment(args, environ)
    workers = from_environment(environ)
    assert workers == {name: checked[name] for name in workers}
    assert environ["TG_SOMETHING_ELSE"] == "kept"
    assert workers["allow_signup"] is False and workers["metrics_require_operator"] is True
    assert workers["metrics_path"] == "/stats"
    # An empty metrics path is a value (no metrics), handed on as such, not the default.
    off = _parser(environ={}).parse_args(["serve", "--metrics-path", ""])
    to_environment(off, environ)
    assert environ["TG_METRICS_PATH"] == "" and from_environment(environ)["metrics_path"] is None
    assert (
        values(_parser(environ={"TG_METRICS_PATH": ""}).parse_args(["serve"]), "serve")[
            "metrics_path"
        ]
        is None
    )
