"""Coroutines that say "await me": a forgotten ``await`` named where it is first noticed.

``ds = rc.datasets.create("dogs")`` without ``await`` gives a coroutine; Python's own errors
then read ``'coroutine' object has no attribute 'upload_folder'`` or ``'coroutine' object is
not iterable``. The public async methods return a :class:`Pending` instead: a real coroutine
(``await``, ``asyncio.create_task`` and ``gather`` take it as one) whose misuse as its result
raises :class:`~runcomfy_async.errors.AsyncUsageError` naming the ``await`` to add.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

from . import errors

__all__ = ["Pending", "awaitable"]

P = ParamSpec("P")
T = TypeVar("T")


class _NotAwaitedAttribute(errors.AsyncUsageError, AttributeError):
    """An attribute asked of an un-awaited call (an AttributeError too, so ``hasattr`` works)."""


class Pending(Coroutine[Any, Any, T]):
    """The coroutine of one library call, which refuses to be used as the call's result."""

    __slots__ = ("_call", "_coro")

    def __init__(self, coro: Coroutine[Any, Any, T], call: str) -> None:
        self._coro = coro
        self._call = call

    def send(self, value: Any) -> Any:
        """Drive the wrapped coroutine (what ``await`` and tasks do)."""
        return self._coro.send(value)

    def throw(self, *args: Any) -> Any:
        """Raise inside the wrapped coroutine (cancellation)."""
        return self._coro.throw(*args)

    def close(self) -> None:
        """Close the wrapped coroutine."""
        self._coro.close()

    def __await__(self) -> Generator[Any, None, T]:
        return self._coro.__await__()

    def __repr__(self) -> str:
        return f"<awaitable {self._call}: write `await {self._call}`>"

    def _refusal(
        self, used: str, error: type[errors.AsyncUsageError] = errors.AsyncUsageError
    ) -> errors.AsyncUsageError:
        """Close the coroutine if it never ran (no "never awaited" warning on top; one a task
        already drives is left alone) and return the error saying what to write."""
        if inspect.getcoroutinestate(self._coro) == inspect.CORO_CREATED:
            self._coro.close()
        return error(
            f"{self._call} was {used} without `await`; it returns an awaitable, not its "
            f"result: write `await {self._call}` inside an `async def`"
        )

    # Hidden from type checkers: to them a Pending is only the coroutine it is, so a forgotten
    # `await` is a type error (no such attribute, not iterable) and `asyncio.create_task(...)`
    # infers the call's result type (an `Any` from `__getattr__` made it `Task[Any]`).
    if not TYPE_CHECKING:

        def __getattr__(self, name: str) -> Any:
            # What the wrapped coroutine has (cr_running, cr_frame...) reads through: asyncio's
            # task reprs and debuggers ask for it.
            if hasattr(self._coro, name) or name.startswith("_"):
                return getattr(self._coro, name)
            raise self._refusal(f"asked for .{name}", _NotAwaitedAttribute)

        def __bool__(self) -> bool:
            raise self._refusal("tested for truth")

        def __iter__(self) -> NoReturn:
            raise self._refusal("iterated")

        def __aiter__(self) -> NoReturn:
            raise self._refusal("iterated with `async for`")

        def __len__(self) -> int:
            raise self._refusal("asked for its length")

        def __getitem__(self, key: object) -> NoReturn:
            raise self._refusal("indexed")

        def __enter__(self) -> NoReturn:
            raise self._refusal("entered with `with`")

        def __exit__(self, *exc_info: object) -> None:
            """Never reached: entering refuses."""

        def __aenter__(self) -> NoReturn:
            raise self._refusal("entered with `async with`")

        async def __aexit__(self, *exc_info: object) -> None:
            """Never reached: entering refuses."""


def awaitable(
    call: str,
) -> Callable[[Callable[P, Coroutine[Any, Any, T]]], Callable[P, Pending[T]]]:
    """Make an ``async def`` method return a :class:`Pending` named ``call`` in its messages
    (e.g. ``"rc.datasets.create(...)"``)."""

    def wrap(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Pending[T]]:
        @functools.wraps(method)
        def pending(*args: P.args, **kwargs: P.kwargs) -> Pending[T]:
            return Pending(method(*args, **kwargs), call)

        return pending

    return wrap
