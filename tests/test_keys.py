"""Key format, checksum and hashing (docs/security.md)."""

from __future__ import annotations

import random
import re
import string

from tenant_gateway.keys import (
    generate_api_key,
    hash_api_key,
    is_well_formed,
    key_display_prefix,
    new_id,
    verify_api_key,
)
from tenant_gateway.resolver import KeyResolver

from .conftest import FakeClock
from .helpers import CountingDirectory


def test_generated_keys_have_the_promised_shape() -> None:
    keys = {generate_api_key() for _ in range(1000)}
    assert len(keys) == 1000
    for key in keys:
        assert re.fullmatch(r"tk_[A-Za-z0-9_-]{38}", key)
        assert is_well_formed(key)
    # 24 random bytes → 192 bits before the checksum
    assert len(next(iter(keys))) == 3 + 32 + 6


def test_hash_and_verify() -> None:
    key = generate_api_key()
    digest = hash_api_key(key)
    assert len(digest) == 32 and key.encode() not in digest
    assert verify_api_key(key, digest)
    assert not verify_api_key(generate_api_key(), digest)
    assert key_display_prefix(key) == key[:11]


def test_ids_are_opaque_and_unique() -> None:
    ids = {new_id("tenant") for _ in range(1000)}
    assert len(ids) == 1000 and all(i.startswith("tenant_") for i in ids)


async def test_mutated_keys_are_rejected_without_a_store_lookup() -> None:
    directory = CountingDirectory()
    resolver = KeyResolver(directory, FakeClock())
    key = generate_api_key()
    rng = random.Random(20261126)
    alphabet = string.ascii_letters + string.digits + "_-"
    rejected = 0
    for _ in range(1000):
        chars = list(key)
        position = rng.randrange(3, len(chars))
        chars[position] = rng.choice([c for c in alphabet if c != chars[position]])
        mutated = "".join(chars)
        if not is_well_formed(mutated):
            rejected += 1
    # CRC-32 catches every single-character substitution
    assert rejected == 1000
    for bad in ("tk_", "tk_" + "A" * 38, key[:-1], key + "A", key.upper(), "TK_" + key[3:]):
        assert not is_well_formed(bad)
    assert directory.lookups == 0
    assert len(resolver) == 0
