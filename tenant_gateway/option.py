"""One setting (a row of ``options.OPTIONS``): the ``TenantGateway`` keyword argument (and
``Settings`` field) it sets, the flag and ``TG_*`` variable that set it from the command line,
how their text is read, and what it means.

A setting's text is its flag's value, else its variable's, else its default's. A flag's default
is its variable's text, marked ``FromEnvironment``, so that a message names the variable a bad
value came from.
"""

from __future__ import annotations

import argparse
import inspect
import math
import re
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, fields
from ipaddress import ip_network
from typing import Any, Literal

from tenant_gateway.accesslog import LOG_FORMATS
from tenant_gateway.client_limits import parse_rate
from tenant_gateway.exceptions import ConfigurationError
from tenant_gateway.middleware import TenantGateway
from tenant_gateway.settings import Settings

__all__ = [
    "SECRET_LENGTH",
    "FromEnvironment",
    "Option",
    "Parse",
    "as_text",
    "parse_boolean",
    "parse_duration",
    "parse_lifetime",
    "parse_log_format",
    "parse_names",
    "parse_networks",
    "parse_number",
    "parse_optional",
    "parse_path_or_off",
    "parse_port",
    "parse_rate_text",
    "parse_secret",
    "parse_text",
]

Parse = Callable[[str], Any]
"""Text → value, or ``ValueError`` with the rest of a sentence that begins with the flag's
name (``must be a number > 0, got '0'``)."""

SECRET_LENGTH = 32


class FromEnvironment(str):
    """A flag's text taken from its ``TG_*`` variable (the flag was not given)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Option:
    name: str
    """The ``TenantGateway`` keyword argument and ``Settings`` field it sets; for a setting of
    ``serve`` alone, the name of its value."""
    group: str
    help: str
    """What it means, said for the keyword argument, the flag and the variable alike."""
    flag: str | None = None
    env: str | None = None
    commands: tuple[str, ...] = ("serve",)
    """The commands that take the flag (``billing close`` for a subcommand's)."""
    parse: Parse | None = None
    """How the flag's or the variable's text is read (None: it has neither)."""
    metavar: str | None = None
    switch: str | None = None
    """For a flag that takes no value: the text it stands for (``--no-signup``: ``false``)."""
    flag_help: str | None = None
    """What the flag does, where it says more than ``help`` (a switch)."""
    repeatable: bool = False
    """The flag is given once per item; its variable lists them, comma-separated."""
    blank_is_value: bool = False
    """An empty variable is a value (``TG_METRICS_PATH=``: no metrics), not an unset one."""
    target: Literal["keyword", "settings", "serve"] = "keyword"
    """What it sets: a keyword argument (and the ``Settings`` field of the same name), a
    ``Settings`` field alone, or how ``serve`` runs (``--host``)."""
    serve_default: str = ""
    """The text default of a ``serve`` setting (the others have their Python default's)."""
    flag_default: str | None = None
    """The flag's and variable's default, where the command line's differs from the keyword
    argument's (``--metrics-path``: ``serve`` owns its app, so it has metrics)."""
    shown_default: str | None = None
    """How the reference shows the Python default (Markdown), where its ``repr`` will not do."""

    @property
    def default(self) -> Any:
        """The Python default: the keyword argument's, or the ``Settings`` field's."""
        if self.target == "keyword":
            return inspect.signature(TenantGateway).parameters[self.name].default
        if self.target == "settings":
            return {field.name: field.default for field in fields(Settings)}[self.name]
        return self.serve_default

    @property
    def default_text(self) -> str:
        """The default of the flag and the variable, as they spell it."""
        if self.flag_default is not None:
            return self.flag_default
        return self.serve_default if self.target == "serve" else as_text(self.default)

    def environment_text(self, environ: Mapping[str, str]) -> str:
        """The variable's text, else the default's (an empty variable is an unset one, unless
        ``blank_is_value``)."""
        text = environ.get(self.env or "")
        if text is None or not (text or self.blank_is_value):
            return self.default_text
        return FromEnvironment(text)

    def read(self, text: str) -> Any:
        """The value of ``text``, or a ``ConfigurationError`` naming the flag (and the
        variable, when the text came from there)."""
        assert self.parse is not None, self.name
        try:
            return self.parse(text)
        except ValueError as exc:
            named = self.flag or self.env or self.name
            if isinstance(text, FromEnvironment) and self.env:
                named = self.env if self.switch else f"{named} (from {self.env})"
            raise ConfigurationError(f"{named} {exc}") from None

    def add_to(self, group: argparse._ArgumentGroup, environ: Mapping[str, str]) -> None:
        """The flag, defaulting to the variable's text in ``environ``."""
        assert self.flag is not None, self.name
        default = self.environment_text(environ) if self.env else self.default_text
        shown = self.default_text or "none"
        described = f"{self.flag_help or self.help} (default: {shown}" + (
            f"; env {self.env})" if self.env else ")"
        )
        described = described.replace("`", "").replace("%", "%%")
        if self.switch is not None:
            group.add_argument(
                self.flag,
                dest=self.name,
                action="store_const",
                const=self.switch,
                default=default,
                help=described,
            )
        else:
            group.add_argument(
                self.flag,
                dest=self.name,
                action=_Each if self.repeatable else "store",
                default=default,
                metavar=self.metavar,
                help=described,
            )

    def hand_on(self, text: str, environ: MutableMapping[str, str]) -> None:
        """Put the flag's text in the variable (for the processes started with ``environ``)."""
        assert self.env is not None, self.name
        if text or self.blank_is_value:
            environ[self.env] = str(text)
        else:
            environ.pop(self.env, None)


class _Each(argparse.Action):
    """A repeatable flag: the values given, comma-joined, replace the variable's text."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        given = getattr(namespace, self.dest)
        first = given is self.default  # the variable's text, or the default's
        setattr(namespace, self.dest, str(values) if first else f"{given},{values}")


def as_text(value: object) -> str:
    """A Python value as a flag or a variable spells it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list | frozenset):
        return ",".join(str(item) for item in value)
    return str(value)


# -- how text is read --------------------------------------------------------------------------


def _got(text: str) -> str:
    return f"got {text!r:.80}"


def parse_text(text: str) -> str:
    return text


def parse_optional(text: str) -> str | None:
    """Empty: unset."""
    return text or None


def parse_number(least: float, *, above: bool = False, integer: bool = False) -> Parse:
    """A finite number no less than ``least`` (more than it, with ``above``)."""
    phrase = f"must be {'an integer' if integer else 'a number'} {'>' if above else '>='} {least:g}"

    def parse(text: str) -> float | int:
        try:
            value: float = int(text.strip()) if integer else float(text.strip())
        except ValueError:
            value = math.nan
        if not (value > least if above else value >= least) or value == math.inf:
            raise ValueError(f"{phrase}, {_got(text)}")
        return value

    return parse


def parse_port(text: str) -> int:
    value = int(parse_number(0, integer=True)(text))
    if value > 65535:
        raise ValueError(f"must be a port number (0 to 65535), {_got(text)}")
    return value


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_boolean(text: str) -> bool:
    value = text.strip().lower()
    if value not in _TRUE + _FALSE:
        raise ValueError(f"must be true or false, {_got(text)}")
    return value in _TRUE


def parse_rate_text(text: str) -> str:
    """A rate such as ``10/minute``, or ``unlimited``: checked, kept as text."""
    try:
        parse_rate(text, "")
    except ConfigurationError:
        raise ValueError(
            f"must be one rate of at least 1 such as 10/minute, or unlimited, {_got(text)}"
        ) from None
    return text


def parse_names(text: str) -> list[str] | None:
    """Comma-separated names; empty: unset."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if text and not names:
        raise ValueError(f"must name at least one, {_got(text)}")
    return names or None


def parse_networks(text: str) -> list[str]:
    """Comma-separated CIDRs."""
    networks = [cidr.strip() for cidr in text.split(",") if cidr.strip()]
    for cidr in networks:
        try:
            ip_network(cidr)
        except ValueError as exc:
            raise ValueError(f"must list networks such as 10.0.0.0/8: {exc}") from None
    return networks


def parse_path_or_off(text: str) -> str | None:
    if text and not text.startswith("/"):
        raise ValueError(f"must start with '/' ('' turns it off), {_got(text)}")
    return text or None


def parse_log_format(text: str) -> str:
    if text not in LOG_FORMATS:
        raise ValueError(f"must be {' or '.join(LOG_FORMATS)}, {_got(text)}")
    return text


def parse_secret(text: str) -> str | None:
    """A secret of at least ``SECRET_LENGTH`` characters (never repeated); empty: unset."""
    if text and len(text) < SECRET_LENGTH:
        raise ValueError(
            f"must be at least {SECRET_LENGTH} characters (it has {len(text)}); make one with"
            " python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return text or None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``1h``, ``7d`` or seconds (``3600``) → seconds, more than 0."""
    found = _DURATION.fullmatch(text.strip().lower())
    seconds = float(found[1]) * _UNITS[found[2]] if found else 0.0
    if not 0 < seconds < math.inf:
        raise ValueError(f"must be a duration such as 30m, 12h or 7d (or seconds), {_got(text)}")
    return seconds


def parse_lifetime(text: str) -> float | None:
    """A duration, or ``none``: no limit."""
    return None if text.strip().lower() == "none" else parse_duration(text)
