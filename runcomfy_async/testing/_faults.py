"""Fault injection rules: which requests fail, how, and in a seeded, replayable order.

A rule matches on API, method and a path regex; ``skip`` lets the first matches through,
``count`` caps how often it fires and ``rate`` fires it with a probability drawn from the
emulator's seed. The draw depends only on the seed, the rule, the request (method and path, ids
masked) and how often that same request was seen before -- not on arrival order -- so a
concurrent run (a 1,000-file upload) replays the same faults on the same requests and attempts.

By default a fault answers *instead of* the handler: the request provably never ran, as when a
proxy or load balancer fails. ``after=True`` runs the handler first and then loses or replaces
its answer: the request did reach the server (a dataset was created, a job queued), which is
what a client must not blindly repeat (the idempotency tests use it).
"""

from __future__ import annotations

import hashlib
import re
from typing import Final, Literal, get_args

import attrs

__all__ = ["FAULT_KINDS", "FaultKind", "FaultRule", "FaultSet", "request_key"]

FaultKind = Literal[
    "429",
    "500",
    "502",
    "503",
    "504",
    "reset",
    "reset_mid_body",
    "html",
    "truncated",
    "slow",
    "expire_url",
]
FAULT_KINDS: Final[frozenset[str]] = frozenset(get_args(FaultKind))
_APIS: Final = frozenset({"trainer", "model", "server", "storage", "comfyui", "other"})


def _check_kind(_: object, __: attrs.Attribute[str], value: str) -> None:
    """Reject unknown fault kinds early, naming the valid ones."""
    if value not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {value!r}; use one of {sorted(FAULT_KINDS)}")


def _check_api(_: object, __: attrs.Attribute[str | None], value: str | None) -> None:
    """Reject misspelt API names, which would otherwise silently never match."""
    if value is not None and value not in _APIS:
        raise ValueError(f"unknown api {value!r}; use one of {sorted(_APIS)}")


def _check_rate(_: object, __: attrs.Attribute[float | None], value: float | None) -> None:
    """A rate is a probability."""
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"rate must be between 0 and 1, got {value}")


def _upper(value: str | None) -> str | None:
    """Methods compare case-insensitively."""
    return value.upper() if value is not None else None


@attrs.define(kw_only=True, eq=False)
class FaultRule:
    """One injected fault: what to send instead of the real answer, and to which requests.

    Args:
        kind: ``"429"`` (``Retry-After`` only when ``retry_after`` is given), ``"500"``,
            ``"502"``, ``"503"``, ``"504"`` (storage requests get storage's error body),
            ``"reset"`` (drop the connection without an answer), ``"reset_mid_body"`` (read
            half of the request body, then drop the connection), ``"html"`` (a proxy's HTML
            502 page), ``"truncated"`` (200 with a body cut mid-JSON), ``"slow"`` (wait
            ``delay`` then answer normally) or ``"expire_url"`` (storage answers 403
            ExpiredToken).
        api: only requests to this API (``"trainer"``, ``"model"``, ``"server"``, ``"storage"``,
            ``"comfyui"``); ``expire_url`` defaults to ``"storage"``.
        method: only this HTTP method.
        path: a regex searched in the request path.
        rate: fire with this probability (0..1) on each eligible request.
        count: fire at most this many times.
        skip: let the first ``skip`` matching requests through.
        retry_after: seconds for the ``Retry-After`` header of a ``"429"`` fault.
        delay: real seconds to wait before the fault (the whole point of ``"slow"``).
        after: run the handler first, then apply the fault to its answer (the request was
            processed; only the answer is lost or replaced). Not for ``"reset_mid_body"``,
            whose handler never gets the whole body.

    Raises:
        ValueError: an unknown kind or API, a rate outside 0..1, a negative count/skip/delay,
            an invalid regex, or ``after`` with ``"reset_mid_body"``.
    """

    kind: FaultKind = attrs.field(validator=_check_kind)
    api: str | None = attrs.field(default=None, validator=_check_api)
    method: str | None = attrs.field(default=None, converter=_upper)
    path: str | None = None
    rate: float | None = attrs.field(default=None, validator=_check_rate)
    count: int | None = attrs.field(default=None)
    skip: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    retry_after: float | None = None
    delay: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    after: bool = False
    #: requests that matched (including skipped ones)
    matched: int = attrs.field(default=0, init=False)
    #: times the fault was applied
    fired: int = attrs.field(default=0, init=False)
    _pattern: re.Pattern[str] | None = attrs.field(init=False, default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        """Compile the path regex once and apply the per-kind defaults."""
        if self.count is not None and self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")
        if self.after and self.kind == "reset_mid_body":
            raise ValueError("a reset_mid_body fault cannot come after the handler ran")
        if self.path is not None:
            self._pattern = re.compile(self.path)
        if self.kind == "expire_url" and self.api is None:
            self.api = "storage"

    def matches(self, api: str, method: str, path: str) -> bool:
        """Whether this rule's filters select the request (counters untouched)."""
        return (
            (self.api is None or self.api == api)
            and (self.method is None or self.method == method.upper())
            and (self._pattern is None or self._pattern.search(path) is not None)
        )

    def should_fire(self, draw: float) -> bool:
        """Count one matching request and decide whether the fault hits it.

        Args:
            draw: this request's seeded number in [0, 1), compared with ``rate``.
        """
        self.matched += 1
        if self.matched <= self.skip:
            return False
        if self.count is not None and self.fired >= self.count:
            return False
        if self.rate is not None and draw >= self.rate:
            return False
        self.fired += 1
        return True


_ID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


def request_key(method: str, path: str) -> str:
    """A request's identity across runs: its method and path with the (random) ids masked."""
    return f"{method.upper()} {_ID.sub('{id}', path)}"


class FaultSet:
    """The active rules, checked in the order they were added; the first that fires wins."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rules: list[FaultRule] = []
        self._serial: dict[FaultRule, int] = {}  # holds the rule: no id reuse
        self._seen: dict[str, int] = {}

    def add(self, rule: FaultRule) -> FaultRule:
        """Activate a rule and return it (its counters show how often it fired)."""
        self._serial.setdefault(rule, len(self._serial))
        self.rules.append(rule)
        return rule

    def draw(self, rule: FaultRule, key: str, occurrence: int) -> float:
        """The seeded number in [0, 1) of one request for one rule, independent of order."""
        material = f"{self.seed}\0{self._serial[rule]}\0{key}\0{occurrence}".encode()
        digest = hashlib.blake2b(material, digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    def remove(self, rule: FaultRule) -> None:
        """Deactivate one rule; a rule already removed is ignored."""
        if rule in self.rules:
            self.rules.remove(rule)

    def clear(self) -> None:
        """Deactivate every rule."""
        self.rules.clear()

    def pick(self, api: str, method: str, path: str) -> FaultRule | None:
        """The rule that fires for this request, if any."""
        if not self.rules:  # nothing to draw for: keep no per-request bookkeeping either
            return None
        key = request_key(method, path)
        occurrence = self._seen[key] = self._seen.get(key, 0) + 1
        for rule in list(self.rules):
            if rule.matches(api, method, path) and rule.should_fire(
                self.draw(rule, key, occurrence)
            ):
                return rule
        return None
