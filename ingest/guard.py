"""What the collector checks before it lands a datagram: signatures, replays, per-source rates.

Each check exists only when its setting turns it on, so with the defaults
(``signing=off``, ``rate_limit_per_source=0``) the collector's receive loop is
exactly what it was without them.

**Signatures** (``Verifier``; wire format in ``healthmon.schema``): with
``signing=optional`` a signed datagram is checked and an unsigned one is
parsed as always; with ``signing=required`` an unsigned one is rejected as
``unsigned``.  A signed datagram is rejected as ``bad_signature`` (malformed
trailer, wrong HMAC; compared in constant time), ``unknown_key``,
``stale_signature`` (its message's ``ts`` is more than ``signing_window_s``
from the collector's clock) or ``replayed`` (the very same datagram was
accepted before).  The HMAC is checked before the message is parsed.

**Replay memory** (``ReplayMemory``): a replayed datagram carries the ``ts``
of the original, so it is either stale or within the window; within the
window it is caught by its signature, which is remembered until its ``ts``
leaves the window.  Signatures are kept in sets per second of ``ts`` (a
replay has the same ``ts``, so one set is looked at), as a 64-bit prefix of
the HMAC (an int in a set: ~127 bytes each, measured; a false "replayed"
needs a 64-bit collision of a keyed hash within one second of ``ts``).
Memory is therefore at most ``signed datagrams/s × 2 × signing_window_s``
entries (senders with sane clocks fill only the past half) and never more
than ``REPLAY_MEMORY_MAX``: beyond it, the oldest seconds are forgotten and
messages of those seconds or older are refused as ``stale_signature``
(under such load the window shrinks; replay protection never lapses).  The
memory is the process's: after a restart, or at another collector, a
datagram captured within the window can be replayed once more.

**Rate limits** (``RateLimiter``): a token bucket per source IP address
(``rate_limit_per_source`` tokens/s, ``rate_limit_burst`` at most), checked
first, before any parsing: a flood costs one dict lookup per datagram.
Excess datagrams are counted under ``rate_limited`` and dropped, not
dead-lettered: a flood would otherwise fill the landing store with dead
letters.  Buckets that have refilled are swept every ``SWEEP_S``; at most
``RATE_LIMIT_MAX_SOURCES`` sources are tracked (a flood of spoofed source
addresses beyond that resets the table: limits lapse for a moment rather
than memory growing without bound).  The source address of UDP can be
forged: a rate limit protects against a misbehaving sender, not against an
attacker who spoofs many addresses.
"""

from __future__ import annotations

import hmac
import logging

from healthmon import schema
from healthmon.config import Settings
from healthmon.schema import Rejected
from healthmon.signing import load_keys

log = logging.getLogger(__name__)

REPLAY_MEMORY_MAX = 1_000_000  # signatures remembered at most (~130 MB, measured ~127 B each): then the oldest seconds go
REPLAY_MEMORY_KEEP = 0.9  # when full, forget the oldest seconds until this share of the maximum is left
RATE_LIMIT_MAX_SOURCES = 200_000  # source addresses tracked at most (~37 MB, measured ~183 B each)
SWEEP_S = 1.0  # how often expired signatures and refilled buckets are dropped


class ReplayMemory:
    """Signatures of accepted signed datagrams, by second of their message's ts, until the ts leaves the window."""

    def __init__(self, window_s: float, capacity: int = REPLAY_MEMORY_MAX) -> None:
        self.window_s = window_s
        self.capacity = capacity
        self.by_second: dict[int, set[int]] = {}
        self.size = 0
        self.floor = float("-inf")  # messages with ts below this are refused: their seconds were forgotten under load
        self.forgotten = 0  # signatures forgotten before their time (capacity reached)

    def remember(self, key: int, ts: float) -> None:
        """Remember ``key`` (a signature prefix) of a message stamped ``ts``; Rejected when it was seen or is forgotten."""
        if ts < self.floor:
            raise Rejected("stale_signature", f"ts={ts} is older than the replay memory reaches under load ({self.floor})")
        second = int(ts // 1)
        seen = self.by_second.get(second)
        if seen is None:
            seen = self.by_second[second] = set()
        elif key in seen:
            raise Rejected("replayed", f"signature {key:016x} of ts={ts} was accepted before")
        seen.add(key)
        self.size += 1
        if self.size > self.capacity:
            self._forget_oldest()

    def _forget_oldest(self) -> None:
        keep = int(self.capacity * REPLAY_MEMORY_KEEP)
        for second in sorted(self.by_second):
            if self.size <= keep:
                break
            dropped = self.by_second.pop(second)
            self.size -= len(dropped)
            self.forgotten += len(dropped)
            self.floor = second + 1
        log.warning("replay memory full (%d signatures): messages stamped before %s are refused as stale_signature",
                    self.capacity, self.floor)

    def expire(self, now: float) -> None:
        """Forget the seconds that left the window: their messages are stale anyway."""
        oldest_kept = int((now - self.window_s) // 1)
        for second in [s for s in self.by_second if s < oldest_kept]:
            self.size -= len(self.by_second.pop(second))


class Verifier:
    """The signature checks of ``signing=optional|required``: ``parse`` replaces ``schema.parse_message``."""

    def __init__(self, settings: Settings, keys: dict[str, bytes]) -> None:
        self.required = settings.signing == "required"
        self.keys = keys
        self.macs = {key_id.encode("ascii"): schema.signer(secret) for key_id, secret in keys.items()}  # by key id as sent
        self.window_s = settings.signing_window_s
        self.replays = ReplayMemory(settings.signing_window_s)
        self.signed = 0  # accepted signed messages (the rest of 'accepted' came unsigned)

    def parse(self, data: bytes, recv_ts: float, max_skew_s: float) -> dict:
        """The message of a datagram whose signature holds (or that is unsigned, when allowed); Rejected otherwise."""
        signed = schema.split_signature(data)
        if signed is None:
            if self.required:
                raise Rejected("unsigned", "signing=required")
            return schema.parse_message(data, recv_ts, max_skew_s)
        mac = self.macs.get(signed.key_id)
        if mac is None:
            raise Rejected("unknown_key", f"key id {signed.key_id[:128].decode('ascii', 'replace')!r}")
        if not hmac.compare_digest(mac(signed.body), signed.mac):
            raise Rejected("bad_signature", f"HMAC does not match (key id {signed.key_id.decode('ascii')!r})")
        msg = schema.parse_message(signed.body, recv_ts, max_skew_s)
        ts = msg["ts"]
        if not recv_ts - self.window_s <= ts <= recv_ts + self.window_s:
            raise Rejected("stale_signature", f"ts={ts} is {ts - recv_ts:+.1f} s from now (signing_window_s={self.window_s:g})")
        self.replays.remember(int(signed.mac[:16], 16), ts)
        self.signed += 1
        return msg

    def counters(self) -> dict:
        r = self.replays
        return {"mode": "required" if self.required else "optional", "keys": len(self.keys), "signed_accepted": self.signed,
                "remembered_signatures": r.size, "forgotten_signatures": r.forgotten}


class RateLimiter:
    """Token buckets per source address: ``allow(address, now)`` is False for datagrams beyond the rate."""

    def __init__(self, rate: float, burst: int, max_sources: int = RATE_LIMIT_MAX_SOURCES) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_sources = max_sources
        self.buckets: dict[str, list[float]] = {}  # address -> [tokens, time of last update]
        self.limited_by_source: dict[str, int] = {}  # since the last report, for the log (at most 1000 sources)
        self.resets = 0

    def allow(self, address: str, now: float) -> bool:
        bucket = self.buckets.get(address)
        if bucket is None:
            if len(self.buckets) >= self.max_sources:
                self.sweep(now)
                if len(self.buckets) >= self.max_sources * 0.9:  # else the next new sources would sweep again and again
                    self.buckets.clear()
                    self.resets += 1
            self.buckets[address] = [self.burst - 1.0, now]
            return True
        tokens = bucket[0]
        if now > bucket[1]:
            tokens += (now - bucket[1]) * self.rate
            if tokens > self.burst:
                tokens = self.burst
            bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        limited = self.limited_by_source
        if address in limited or len(limited) < 1000:
            limited[address] = limited.get(address, 0) + 1
        return False

    def sweep(self, now: float) -> None:
        """Drop the buckets that are full again: a new bucket would be the same."""
        rate, burst = self.rate, self.burst
        for address in [a for a, (tokens, last) in self.buckets.items() if tokens + (now - last) * rate >= burst]:
            del self.buckets[address]

    def report(self) -> str | None:
        """What was limited since the last report (the top sources), for the log; None when nothing was."""
        limited, self.limited_by_source = self.limited_by_source, {}
        if not limited:
            return None
        top = sorted(limited.items(), key=lambda item: -item[1])[:5]
        return (f"rate limited {sum(limited.values())} datagrams from {len(limited)}{'+' if len(limited) >= 1000 else ''} "
                f"sources (rate_limit_per_source={self.rate:g}/s, burst {self.burst:g}); most: "
                + ", ".join(f"{a} ({n})" for a, n in top))

    def counters(self) -> dict:
        return {"per_source": self.rate, "burst": self.burst, "sources": len(self.buckets), "table_resets": self.resets}


def make_guards(settings: Settings) -> tuple[Verifier | None, RateLimiter | None]:
    """The checks the settings turn on (None for each that is off); ConfigError for a bad keys file."""
    verifier = None
    if settings.signing != "off":
        verifier = Verifier(settings, load_keys(settings.signing_keys_file))
    limiter = RateLimiter(settings.rate_limit_per_source, settings.rate_limit_burst) if settings.rate_limit_per_source > 0 else None
    return verifier, limiter

