"""Redis Cluster's key space: 16384 hash slots, a key's slot (its ``{tag}``, when it has one),
and the slot map as ``CLUSTER SHARDS`` or ``CLUSTER SLOTS`` answer it."""

from __future__ import annotations

from typing import Any

from redis.crc import key_slot

__all__ = [
    "SLOTS",
    "Node",
    "address",
    "node_name",
    "owners_from_shards",
    "owners_from_slots",
    "slot_of",
    "text",
]

SLOTS = 16384

Node = tuple[str, int]
"""A node's (host, port)."""


def slot_of(name: str) -> int:
    """The hash slot of a key (its ``{tag}`` when it has one)."""
    return key_slot(name.encode())


def node_name(node: Node) -> str:
    host, port = node
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def address(where: str, asked_host: str) -> Node:
    """``host:port`` of a redirection; an empty host is the host that answered."""
    host, _, port = where.rpartition(":")
    return (host.strip("[]") or asked_host, int(port))


def text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def owners_from_shards(reply: list[Any], asked_host: str, tls: bool) -> list[Node | None]:
    """The slot map from ``CLUSTER SHARDS``: each shard's primary and its slot ranges."""
    owners: list[Node | None] = [None] * SLOTS
    for shard in reply:
        fields = dict(zip(map(text, shard[::2]), shard[1::2], strict=True))
        for member in fields["nodes"]:
            node = dict(zip(map(text, member[::2]), member[1::2], strict=True))
            if text(node.get("role")) != "master":
                continue
            host = text(node.get("endpoint", b""))
            port = node["tls-port"] if tls and "tls-port" in node else node["port"]
            primary = (asked_host if host in ("", "?") else host, int(port))
            ranges = [int(bound) for bound in fields["slots"]]
            for start, end in zip(ranges[::2], ranges[1::2], strict=True):
                owners[start : end + 1] = [primary] * (end - start + 1)
    return owners


def owners_from_slots(reply: list[Any], asked_host: str) -> list[Node | None]:
    """The slot map from ``CLUSTER SLOTS``: ranges, each with its primary first."""
    owners: list[Node | None] = [None] * SLOTS
    for entry in reply:
        start, end, primary = int(entry[0]), int(entry[1]), entry[2]
        host = text(primary[0])
        owner = (asked_host if host in ("", "?") else host, int(primary[1]))
        owners[start : end + 1] = [owner] * (end - start + 1)
    return owners
