"""The webhook notifier: POSTs each run event as JSON from a background thread, never blocking the run.

Events go into a bounded queue (a full queue drops the new event, logged); one daemon thread
sends them in order, each attempt with a timeout, retrying what may pass (no answer, 408, 429,
5xx) with backoff (``upgrader.notifications.backoff``). ``close`` waits a bounded time for the
queue to drain and drops (and logs) what is left. ``user:pass@`` in the URL becomes a Basic
Authorization header; only ``redacted_url`` (scheme and host) is ever logged. Redirects are refused (they would
carry the header elsewhere).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from email.message import Message
from typing import IO, Any

import structlog

from upgrader.notifications import backoff, redacted_url, retry_helps

log = structlog.get_logger("upgrader.notify")
_STOP = object()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(  # noqa: PLR0917 (the signature is urllib's)
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Message, newurl: str
    ) -> urllib.request.Request | None:
        return None


class WebhookNotifier:
    """A ``Notifier`` posting to one URL (started at once; ``close`` when the run ends)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        capacity: int = 100,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        self.shown = redacted_url(url)
        # what an error text must never show: the URL's credentials, its path (Slack-like tokens), its query
        self._secret_parts = sorted(
            {p for p in (parts.username, parts.password, parts.query, parts.path.strip("/"), url) if p},
            key=len,
            reverse=True,
        )
        self._url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], fragment=""))
        self._headers = {"Content-Type": "application/json", "User-Agent": "upgrader"}
        if parts.username is not None:
            login = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            self._headers["Authorization"] = f"Basic {base64.b64encode(login.encode()).decode()}"
        self._timeout, self._retries = timeout, retries
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        self._closing = threading.Event()  # set by close: backoff waits end early once the deadline passed
        self._deadline: float | None = None
        self._sleep = sleep
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._counting = threading.Lock()  # sent and dropped change on both threads
        self.sent = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._work, name="upgrader-notify", daemon=True)
        self._thread.start()

    def send(self, event: dict[str, Any]) -> None:
        """Queue ``event``; a full queue drops it (logged). Never blocks, never raises."""
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._drop(event, "the queue of unsent events is full")

    def close(self, wait: float = 10.0) -> None:
        """Let queued events go out for at most ``wait`` seconds; drop (and log) what is left."""
        self._deadline = time.monotonic() + wait
        self._closing.set()
        with contextlib.suppress(queue.Full):  # a full queue: the thread drains it until the deadline
            self._queue.put_nowait(_STOP)
        self._thread.join(timeout=max(0.0, self._deadline - time.monotonic()) + 0.5)
        leftover = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                leftover += 1
                self._drop(item, "the run ended before it could be sent")
        with contextlib.suppress(queue.Full):  # the queue was full at first: the thread still needs its stop
            self._queue.put_nowait(_STOP)
        log.debug("notify-closed", url=self.shown, sent=self.sent, dropped=self.dropped, left=leftover)

    # ---- the sending thread ----------------------------------------------------------------
    def _late(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _work(self) -> None:
        while True:
            try:  # once closing, an empty queue ends the thread even if no stop could be queued
                item = self._queue.get(timeout=0.2 if self._closing.is_set() else None)
            except queue.Empty:
                return
            if item is _STOP:
                return
            if self._late():
                self._drop(item, "the run ended before it could be sent")
                continue
            self._deliver(item)

    def _deliver(self, event: dict[str, Any]) -> None:
        body = json.dumps(event).encode()
        problem = ""
        for attempt in range(self._retries + 1):
            if attempt:
                pause = backoff(attempt)
                if self._sleep is not None:
                    self._sleep(pause)
                elif self._closing.is_set():
                    time.sleep(min(pause, max(0.0, (self._deadline or 0) - time.monotonic())))
                else:
                    self._closing.wait(pause)
                if self._late():
                    break
            status, problem = self._post(body)
            if status is not None and 200 <= status < 300:
                with self._counting:
                    self.sent += 1
                return
            if not retry_helps(status):
                break
        self._drop(event, problem)

    def _post(self, body: bytes) -> tuple[int | None, str]:
        request = urllib.request.Request(self._url, data=body, headers=self._headers, method="POST")  # noqa: S310 (http(s) only: spec)
        timeout = self._timeout
        if self._deadline is not None:
            timeout = max(0.1, min(timeout, self._deadline - time.monotonic()))
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return int(response.status), ""
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code, f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            return None, self._clean(str(getattr(exc, "reason", None) or exc) or type(exc).__name__)

    def _clean(self, text: str) -> str:
        for part in self._secret_parts:
            text = text.replace(part, "<redacted>")
        return text

    def _drop(self, event: dict[str, Any], reason: str) -> None:
        with self._counting:
            self.dropped += 1
        log.warning(
            "notification-dropped",
            url=self.shown,
            kind=event.get("kind"),
            run_id=event.get("run_id"),
            reason=reason or "not delivered",
        )
