"""The one retry policy of the adapters: ``TransientError`` only, bounded, jittered, logged, sleep injected.

Every read and every idempotent write in the adapters goes through it: adapter methods with
``@retried`` (which sleeps with the instance's injected ``_sleep``), other calls with
``retrying(call, sleep=...)``. What is retried is decided by ``upgrader.adapters.errors.classify``
alone, which makes passing failures ``TransientError``s. Writes that are not idempotent
(``helm install``, ``helm upgrade``) are not decorated: ``ClusterPorts.upgrade`` retries an upgrade
only after looking whether the lost attempt landed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from upgrader.errors import TransientError

ATTEMPTS = 5  # the first try and four retries
MAX_DELAY = 30.0  # seconds: the most of a server's Retry-After we honour
_JITTERED = wait_exponential_jitter(multiplier=0.5, max=8)  # about 0.5, 1, 2, 4 s, each plus up to 1 s

T = TypeVar("T")
P = ParamSpec("P")
log = structlog.get_logger("upgrader.adapters")


class Sleeps(Protocol):
    """An adapter whose sleep between attempts is injected (time.sleep in real runs)."""

    _sleep: Callable[[float], None]


S = TypeVar("S", bound=Sleeps)


def _wait(state: RetryCallState) -> float:
    """The jittered backoff, or longer when the server asked for it (429/503 Retry-After)."""
    failure = state.outcome.exception() if state.outcome else None
    asked = failure.delay if isinstance(failure, TransientError) and failure.delay else 0.0
    return max(_JITTERED(state), min(asked, MAX_DELAY))


def retrying(call: Callable[[], T], *, sleep: Callable[[float], None] = time.sleep, what: str = "") -> T:
    """``call()``, tried again on TransientError up to ATTEMPTS times in all; the last error is raised."""

    def logged(state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        log.warning(
            "retry",
            operation=what,
            attempt=state.attempt_number,
            of=ATTEMPTS,
            error=getattr(failure, "message", str(failure)),
            status=getattr(failure, "status", None),
        )

    for attempt in Retrying(
        sleep=sleep,
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(ATTEMPTS),
        wait=_wait,
        before_sleep=logged,
        reraise=True,
    ):
        with attempt:
            return call()
    raise AssertionError("unreachable")  # pragma: no cover - Retrying either returns or raises


def retried(method: Callable[Concatenate[S, P], T]) -> Callable[Concatenate[S, P], T]:
    """Decorate an adapter method (a read or an idempotent write) with the retry policy."""

    @functools.wraps(method)
    def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return retrying(lambda: method(self, *args, **kwargs), sleep=self._sleep, what=method.__qualname__)

    return wrapper
