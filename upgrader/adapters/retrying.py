"""The one retry policy of the adapters: ``TransientError`` only, bounded, jittered, logged, sleep injected.

Every read and every idempotent write in the adapters goes through it: adapter methods with
``@retried`` (which sleeps with the instance's injected ``_sleep``), other calls with
``retrying(call, sleep=...)``. What is retried is decided by ``upgrader.adapters.errors.classify``
alone, which makes passing failures ``TransientError``s. While a run holds the lock
(``wait_for_the_api(True)``, set by ``upgrader.runs``), a Kubernetes API that does not answer at all
(``ClusterUnreachableError``: connection refused or reset, a restarting API server) is waited for
longer than other passing failures: past the ATTEMPTS tries, until about UNREACHABLE_PATIENCE
seconds of backoff were spent, so an API server restart is ridden out rather than ending the run.
One-shot commands (plan, discover, history) keep the short budget: they answer, not wait.
The kubernetes client's own urllib3 retries are cut to two connect retries (see
``upgrader.adapters.kube``): this policy, with its backoff, is the one that counts.

Writes that are not idempotent (``helm install``, ``helm upgrade``) are not decorated:
``ClusterPorts.upgrade`` retries an upgrade only after looking whether the lost attempt landed.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter

from upgrader.errors import ClusterUnreachableError, TransientError

ATTEMPTS = 5  # the first try and four retries
MAX_DELAY = 30.0  # seconds: the most of a server's Retry-After we honour
UNREACHABLE_PATIENCE = 45.0  # seconds of backoff spent waiting for an API that does not answer (under a lease)
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


_waiting = threading.Event()  # set while a run holds the lock: every thread's retries wait for the API


def wait_for_the_api(on: bool) -> None:
    """Whether an unanswering API is waited for (UNREACHABLE_PATIENCE) or given the ATTEMPTS tries only."""
    if on:
        _waiting.set()
    else:
        _waiting.clear()


def _patient(failure: BaseException | None) -> bool:
    return _waiting.is_set() and isinstance(failure, ClusterUnreachableError)


def _stop(state: RetryCallState) -> bool:
    """Stop after ATTEMPTS tries; an unanswering API is waited for until UNREACHABLE_PATIENCE seconds of backoff
    (while waiting is on). ``idle_for`` sums the waits asked for, not the clock, so an injected sleep bounds it."""
    if state.attempt_number < ATTEMPTS:
        return False
    failure = state.outcome.exception() if state.outcome else None
    return not _patient(failure) or state.idle_for >= UNREACHABLE_PATIENCE


def retrying(call: Callable[[], T], *, sleep: Callable[[float], None] = time.sleep, what: str = "") -> T:
    """``call()``, tried again on TransientError up to ATTEMPTS times in all (longer while the API does not
    answer); the last error is raised."""

    def logged(state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome else None
        log.warning(
            "retry",
            operation=what,
            attempt=state.attempt_number,
            **({"waiting_up_to_s": UNREACHABLE_PATIENCE} if _patient(failure) else {"of": ATTEMPTS}),
            retry_in=round(state.upcoming_sleep, 1),
            error=getattr(failure, "message", str(failure)),
            status=getattr(failure, "status", None),
        )

    for attempt in Retrying(
        sleep=sleep,
        retry=retry_if_exception_type(TransientError),
        stop=_stop,
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
