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

A fault's ``retry_after`` and ``delay`` are real seconds, never scaled by the emulator's
``speed``: they are pauses the client itself waits out in real time, like the account rate limit.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final, Literal, get_args

import attrs

__all__ = [
    "DEFAULT_ERROR_CODE",
    "DEFAULT_ERROR_MESSAGE",
    "FAULT_KINDS",
    "RETRY_AFTER_KINDS",
    "FaultKind",
    "FaultRule",
    "FaultSet",
    "RetryAfterForm",
    "request_key",
]

FaultKind = Literal[
    "200_error",
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
RetryAfterForm = Literal["seconds", "date"]
FAULT_KINDS: Final[frozenset[str]] = frozenset(get_args(FaultKind))
#: The kinds that may carry a ``Retry-After`` header (RFC 9110 section 10.2.3: 503 and 429).
RETRY_AFTER_KINDS: Final = frozenset({"429", "503"})
_APIS: Final = frozenset({"trainer", "model", "server", "storage", "comfyui", "other"})
#: The hosts whose JSON bodies carry ``error_code`` (docs/wire.md): where ``200_error`` fires.
_ERROR_CODE_APIS: Final = frozenset({"trainer", "model", "server"})
#: The ``error_code`` of a ``200_error`` unless the rule names one (internal error, docs/wire.md).
DEFAULT_ERROR_CODE: Final = 500001
DEFAULT_ERROR_MESSAGE: Final = "Internal Server Error"


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


def _check_retry_after(_: object, __: attrs.Attribute[float | None], value: float | None) -> None:
    """A server-set pause is a finite number of seconds, not negative."""
    if value is not None and not 0.0 <= value < float("inf"):
        raise ValueError(f"retry_after must be a finite number of seconds >= 0, got {value}")


def _check_form(_: object, __: attrs.Attribute[str], value: str) -> None:
    """Only the two forms RFC 9110 allows."""
    if value not in get_args(RetryAfterForm):
        raise ValueError(f"retry_after_form must be 'seconds' or 'date', got {value!r}")


def _upper(value: str | None) -> str | None:
    """Methods compare case-insensitively."""
    return value.upper() if value is not None else None


@attrs.define(kw_only=True, eq=False)
class FaultRule:
    """One injected fault: what to send instead of the real answer, and to which requests.

    Args:
        kind: ``"200_error"`` (HTTP 200 whose JSON body carries a non-null ``error_code``, the
            an error in a 200, docs/wire.md; API hosts only), ``"429"``, ``"500"``,
            ``"502"``, ``"503"``, ``"504"`` (storage requests get storage's error body),
            ``"reset"`` (drop the connection without an answer), ``"reset_mid_body"`` (read
            half of the request body, then drop the connection), ``"html"`` (a proxy's HTML
            502 page), ``"truncated"`` (200 with a body cut mid-JSON), ``"slow"`` (wait
            ``delay`` then answer normally) or ``"expire_url"`` (storage answers 403
            ExpiredToken).
        api: only requests to this API (``"trainer"``, ``"model"``, ``"server"``, ``"storage"``,
            ``"comfyui"``); ``expire_url`` defaults to ``"storage"``; ``200_error`` fires on
            the three API hosts only (``None`` means all three).
        method: only this HTTP method.
        path: a regex searched in the request path.
        rate: fire with this probability (0..1) on each eligible request.
        count: fire at most this many times.
        skip: let the first ``skip`` matching requests through.
        retry_after: seconds for the ``Retry-After`` header of a ``"429"`` or ``"503"`` fault
            (API hosts and storage alike); without it neither sends the header. Real seconds:
            ``speed`` does not scale it.
        retry_after_form: ``"seconds"`` (delta-seconds, rounded up: ``Retry-After: 2``) or
            ``"date"`` (an HTTP-date ``retry_after`` seconds from now, rounded up to the next
            whole second: ``Retry-After: Wed, 21 Oct 2026 07:28:00 GMT``).
        error_code: the ``error_code`` of a ``"200_error"`` body (default 500001).
        error_message: the ``error_message`` of a ``"200_error"`` body.
        delay: real seconds to wait before the fault (the whole point of ``"slow"``).
        after: run the handler first, then apply the fault to its answer (the request was
            processed; only the answer is lost or replaced). Not for ``"reset_mid_body"``,
            whose handler never gets the whole body.

    Raises:
        ValueError: an unknown kind or API, a rate outside 0..1, a negative count/skip/delay/
            retry_after, an invalid regex, ``after`` with ``"reset_mid_body"``,
            ``retry_after`` on a kind other than 429/503, ``retry_after_form="date"`` without
            ``retry_after``, ``error_code``/``error_message`` on a kind other than
            ``"200_error"``, or ``"200_error"`` on a non-API host.
    """

    kind: FaultKind = attrs.field(validator=_check_kind)
    api: str | None = attrs.field(default=None, validator=_check_api)
    method: str | None = attrs.field(default=None, converter=_upper)
    path: str | None = None
    rate: float | None = attrs.field(default=None, validator=_check_rate)
    count: int | None = attrs.field(default=None)
    skip: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    retry_after: float | None = attrs.field(default=None, validator=_check_retry_after)
    retry_after_form: RetryAfterForm = attrs.field(default="seconds", validator=_check_form)
    error_code: int | str | None = None
    error_message: str | None = None
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
        if self.retry_after is not None and self.kind not in RETRY_AFTER_KINDS:
            raise ValueError(f"retry_after is sent with 429 and 503 faults only, not {self.kind!r}")
        if self.retry_after_form == "date" and self.retry_after is None:
            raise ValueError("retry_after_form='date' needs retry_after (seconds from now)")
        if self.kind == "200_error":
            if self.api is not None and self.api not in _ERROR_CODE_APIS:
                raise ValueError(
                    f"a 200_error fault answers API hosts only ({sorted(_ERROR_CODE_APIS)}), "
                    f"not {self.api!r}"
                )
            if self.error_code is None:
                self.error_code = DEFAULT_ERROR_CODE
            if self.error_message is None:
                self.error_message = DEFAULT_ERROR_MESSAGE
        elif self.error_code is not None or self.error_message is not None:
            raise ValueError(f"error_code and error_message are for 200_error, not {self.kind!r}")
        if self.path is not None:
            self._pattern = re.compile(self.path)
        if self.kind == "expire_url" and self.api is None:
            self.api = "storage"

    def matches(self, api: str, method: str, path: str) -> bool:
        """Whether this rule's filters select the request (counters untouched)."""
        if self.kind == "200_error" and api not in _ERROR_CODE_APIS:
            return False  # storage and ComfyUI bodies have no error_code to carry
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
