"""A Redis Cluster of three primaries for the whole run (``benchmarks/redis_cluster.py``): started
on free loopback ports in a temp directory when a test first asks for it, stopped at the end.
Missing ``redis-server`` or a cluster that does not come up: skipped locally, a failure under
``CI=true`` (``conftest.unavailable``)."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from benchmarks.redis_cluster import LocalCluster


@contextmanager
def started_cluster(what: str = "Redis Cluster", **options: Any) -> Iterator[LocalCluster]:
    """Three primaries (``LocalCluster``'s ``options``), stopped at the end; ``unavailable``
    when they do not come up. Modules that break their cluster start one of their own."""
    from .conftest import unavailable  # here, not at import: conftest imports this module

    try:
        cluster = LocalCluster(primaries=3, **options)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        unavailable(what, exc)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    with started_cluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def cluster_url(redis_cluster: LocalCluster) -> str:
    """``redis+cluster://`` naming the three primaries."""
    return redis_cluster.url


@pytest.fixture
def cluster_prefix(redis_cluster: LocalCluster) -> str:
    """A key prefix private to one test (the cluster is thrown away at the end of the run)."""
    return f"tg-test:{uuid.uuid4().hex[:10]}:"
