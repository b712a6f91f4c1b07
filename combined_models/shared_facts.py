"""Health facts shared between daemons through a store (Valkey or Redis): the wire form and its rules.

Pure: no I/O, no trio (see `daemon/shared.py` for the actor that talks to the store).

A fact says "this account's `model` (or the whole account) cools until then, because of
that", nothing more: no prompt, answer, token count, model list or credential is ever in
one. The account is `account_id`: an HMAC-SHA256 keyed by the team's secret over the
provider's API, base URL, region and credential. The credential never leaves the process;
without the secret, the hash cannot even confirm a guessed key.

Durations travel as remaining milliseconds, never as wall-clock instants, so the clocks
of the machines never enter into how long a cooldown lasts: a fact from the channel is
applied with the duration as sent (it errs long by the delivery time, milliseconds), and
a fact read back from a key after a reconnect takes the store's own countdown (`PTTL`).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Literal

import msgspec

from .limits import MAX_MODEL_ID

VERSION = 1
MAX_REMAINING_MS = 7 * 86400 * 1000  # health.Policy.hint_cap: no fact imposes a longer wait
MAX_FACT_BYTES = 4096  # anything longer on the channel or in a key is not ours
# Failure classes worth telling the team: they belong to the account or the provider's side.
# Not shared: unreachable / silent (this machine's network), auth (this machine's clock or
# credentials file), not found (a per-machine model id typo), and the caller's own faults.
SHARED_REASONS = frozenset({"rate_limited", "quota_exhausted", "overloaded", "transient"})

StateName = Literal["cooldown", "down", "closed"]


class Fact(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One health fact, as it is written to a key and published on the channel (JSON)."""

    v: Literal[1] = 1  # VERSION
    origin: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{8,32}$")]  # the sending daemon's instance id
    account: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]  # account_id(...)
    api: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9-]{1,32}$")]
    model: Annotated[str, msgspec.Meta(max_length=MAX_MODEL_ID)] = ""  # "": the whole account
    state: StateName  # "closed": a breaker closed there (told, never applied: facts only lengthen)
    reason: Annotated[str, msgspec.Meta(max_length=32)] = ""  # the failure class
    remaining_ms: Annotated[int, msgspec.Meta(ge=0, le=MAX_REMAINING_MS)] = 0
    sent_at_ms: Annotated[int, msgspec.Meta(ge=0, le=10**14)] = 0  # the sender's wall clock (skew report)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Fact)


def encode(fact: Fact) -> bytes:
    return _encoder.encode(fact)


def decode(data: bytes | str) -> Fact | None:
    """The fact in `data`; None for anything else (another version, a stranger's value, garbage)."""
    if len(data) > MAX_FACT_BYTES:
        return None
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def account_id(secret: bytes, api: str, base_url: str, region: str | None, credential: str) -> str:
    """The account's name in the store: HMAC-SHA256(secret, api, base URL, region, credential), hex.

    Two daemons share a cooldown only when every part matches, so different keys never
    do. Keyed by the team's secret: the store (or anyone reading it) learns nothing about
    the credential, and cannot test a guess of it without the secret.
    """
    parts = ("cm-account-v1", api, base_url.rstrip("/"), region or "", credential)
    return hmac.new(secret, "\0".join(parts).encode(), hashlib.sha256).hexdigest()


def channel(prefix: str) -> str:
    return f"{prefix}:health:v{VERSION}"


def key_pattern(prefix: str) -> str:
    """Every fact key, for the catch-up `SCAN` (glob characters in model ids cannot widen it: the prefix is fixed)."""
    return f"{prefix}:health:v{VERSION}:*"


def key_for(prefix: str, fact: Fact) -> str:
    """One key per (account, API, model): the latest-ending fact about it lives there."""
    level = f"m:{fact.model}" if fact.model else "p"
    return f"{prefix}:health:v{VERSION}:{fact.account}:{fact.api}:{level}"


def received_remaining(fact: Fact) -> float:
    """Seconds a fact from the channel cools for here: the duration as sent.

    Not shortened by the sender's timestamp: with clocks apart, that would shorten or
    stretch the cooldown by the difference. The duration as sent errs long by the
    delivery time only (milliseconds), and in the safe direction.
    """
    return fact.remaining_ms / 1000.0


def stored_remaining(fact: Fact, pttl_ms: int) -> float:
    """Seconds a fact read back from its key cools for here: the store's own countdown (`PTTL`).

    A key without an expiry (-1: not written by us) or gone (-2) gives nothing; the value's
    own duration caps it (a key whose expiry someone extended is no longer trusted past it).
    """
    if pttl_ms <= 0:
        return 0.0
    return min(pttl_ms, fact.remaining_ms) / 1000.0


def clock_skew_ms(fact: Fact, now_wall_ms: int) -> int:
    """How far the sender's clock seems to be from ours (plus the delivery time), for status only."""
    return now_wall_ms - fact.sent_at_ms
