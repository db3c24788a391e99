"""The one place outside failures become our typed errors (the classes in ``upgrader.errors``).

``classify`` takes what an outside call left us - a Kubernetes API answer (the client's
``ApiException``), a urllib3 or socket error, or the text helm wrote to stderr - and returns the
``UpgraderError`` that says what to do about it: ``TransientError`` (retry), ``AccessDeniedError``,
``NotFoundError``, ``ReleaseLockedError``, or a lasting ``ApiError``/``HelmError``. ``mapped``
wraps a block of client calls and raises what ``classify`` returns, with the operation
("patching Deployment shop/web") in the message. Nothing else in upgrader reads error text or
HTTP statuses; the retry policy (``upgrader.adapters.retrying``) retries ``TransientError`` only.

The client's ApiException is recognised by its shape (``status``, ``reason`` and ``body``) rather
than its class, so this module needs no ``kubernetes`` import: only the adapters named in
pyproject.toml's import-linter contract may import it.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import urllib3

from upgrader.errors import (
    AccessDeniedError,
    ApiError,
    ChartNotFoundError,
    ClusterUnreachableError,
    HelmAccessDeniedError,
    HelmError,
    NotFoundError,
    ReleaseLockedError,
    ReleaseNotFoundError,
    TransientError,
    TransientHelmError,
    UpgraderError,
)
from upgrader.redaction import redact_text

# Words of failures that pass on their own, as the API server, client-go (helm) and Go's net
# packages write them: throttling and 5xx, dropped or refused connections, timeouts, etcd
# leader elections. "another operation is in progress" is NOT one of them.
_TRANSIENT = re.compile(
    r"too many requests|\b429\b|\b50[234]\b|the server is currently unable to handle the request"
    r"|etcdserver: (?:leader changed|request timed out|no leader)|connection reset by peer|connection refused"
    r"|broken pipe|i/o timeout|tls handshake timeout|handshake operation timed out|http2: client connection lost"
    r"|unexpected eof|the server was unable to return a response in the time allotted"
    r"|client\.timeout exceeded|kubernetes cluster unreachable",
    re.IGNORECASE,
)
_UNREACHABLE = re.compile(
    r"kubernetes cluster unreachable|connection refused|connection reset by peer|broken pipe|unexpected eof"
    r"|http2: client connection lost|tls handshake timeout",
    re.IGNORECASE,
)
_LOCKED = re.compile(r"another operation (?:\(install/upgrade/rollback\) )?is in progress", re.IGNORECASE)
_RELEASE_NOT_FOUND = re.compile(r"\brelease: not found|\brelease not found", re.IGNORECASE)
_CHART_NOT_FOUND = re.compile(
    r"\brepo \S+ not found|no repo named|no repositories (?:configured|found|to show)"
    r"|chart \"[^\"]+\" (?:version \"[^\"]+\" )?(?:matching \S+ )?not found|no chart (?:version|name) found",
    re.IGNORECASE,
)
# The API server's words for an RBAC denial (also inside helm's messages).
_RBAC = re.compile(
    r"cannot (?P<verb>[a-z]+) resource \"(?P<resource>[^\"]+)\" in API group \"(?P<group>[^\"]*)\""
    r"(?: in the namespace \"(?P<namespace>[^\"]+)\")?"
)
_HELM_DENIED = re.compile(r"is forbidden: User \"|\bUnauthorized\b|you must be logged in to the server", re.I)
_UNREACHABLE_HINT = "check that the cluster is up and that --kubeconfig/--context point at it"
_TRANSIENT_HINT = (
    "a passing failure (throttling, a busy or restarting API server, a dropped connection); trying again may help"
)
_PREFLIGHT_HINT = "`upgrader preflight` checks every permission a run needs"
_LASTING_5XX = frozenset({501, 505})  # Not Implemented, HTTP Version Not Supported: no retry helps
_Denied = TypeVar("_Denied", bound=AccessDeniedError)


def classify(failure: BaseException | str, *, doing: str = "") -> UpgraderError:  # noqa: PLR0911 - one return per kind
    """The typed error for an API exception, a connection error or helm's stderr text.

    ``doing`` names the operation for the message ("reading ConfigMap linkerd/linkerd-config").
    An UpgraderError comes back unchanged; helm's text keeps helm's own words in the message.
    """
    if isinstance(failure, str):
        return _from_helm(redact_text(failure).strip())
    if isinstance(failure, UpgraderError):
        return failure
    if _is_api_answer(failure):
        return _from_api(failure, doing)
    if isinstance(failure, urllib3.exceptions.MaxRetryError) and isinstance(failure.reason, BaseException):
        return classify(failure.reason, doing=doing)
    if isinstance(failure, urllib3.exceptions.SSLError):
        return _from_tls(str(failure), doing)
    if isinstance(failure, (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)):
        return ClusterUnreachableError(
            f"the Kubernetes API did not answer{_while(doing)}: {_describe(failure)}", hint=_UNREACHABLE_HINT
        )
    return UpgraderError(f"unexpected failure{_while(doing)}: {_describe(failure)}")


def outside(exc: BaseException) -> bool:
    """Whether ``exc`` is an outside failure ``classify`` knows (not a bug of ours to let through)."""
    return _is_api_answer(exc) or isinstance(exc, (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError))


@contextmanager
def mapped(doing: str) -> Iterator[None]:
    """Raise the classified error for any outside failure in the block (``doing`` names the operation)."""
    try:
        yield
    except Exception as exc:
        if not outside(exc):
            raise
        raise classify(exc, doing=doing) from exc


def _while(doing: str) -> str:
    return f" while {doing}" if doing else ""


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_api_answer(exc: BaseException) -> bool:
    """The Kubernetes client's ApiException (and its per-status subclasses), by shape."""
    return all(hasattr(exc, a) for a in ("status", "reason", "body")) and (
        exc.status is None or isinstance(exc.status, int)  # type: ignore[attr-defined]
    )


def _api_message(exc: Any) -> str:
    """The API server's own message (a Status object's ``message``), else the HTTP reason."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = None
    message = body.get("message") if isinstance(body, dict) else None
    return redact_text(str(message or exc.reason or "")).strip()


def _retry_after(exc: Any) -> float | None:
    headers = getattr(exc, "headers", None) or {}
    try:
        value = headers.get("Retry-After")
        return float(value) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None


def _from_api(exc: Any, doing: str) -> UpgraderError:  # noqa: PLR0911 - one return per kind of answer
    status: int | None = exc.status
    said = _api_message(exc)
    answer = f"{status} {exc.reason or ''}".strip() + (f": {said}" if said and said != exc.reason else "")
    if not status:  # no HTTP answer: the client could not even send (a TLS failure, a bad request body)
        if _TRANSIENT.search(said):
            return ClusterUnreachableError(
                f"the Kubernetes API did not answer{_while(doing)}: {said}", hint=_UNREACHABLE_HINT
            )
        return (
            _from_tls(said, doing) if "ssl" in said.lower() else ApiError(f"cannot call the API{_while(doing)}: {said}")
        )
    if status == 401:
        return AccessDeniedError(
            f"the Kubernetes API did not accept our credentials{_while(doing)}: {answer}",
            hint="renew the credentials of the kubeconfig context (--kubeconfig/--context)",
            status=status,
        )
    if status == 403:
        return _denied(AccessDeniedError, f"the Kubernetes API refused {doing or 'a request'}: {answer}", said, status)
    if status == 404:
        return NotFoundError(f"not found{_while(doing)}: {said or answer}")
    if status in (408, 429) or (500 <= status <= 599 and status not in _LASTING_5XX) or _TRANSIENT.search(said):
        return TransientError(
            f"the Kubernetes API failed{_while(doing)}: {answer}",
            hint=_TRANSIENT_HINT,
            status=status,
            delay=_retry_after(exc),
        )
    return ApiError(f"the Kubernetes API refused {doing or 'a request'}: {answer}", status=status)


def _from_tls(text: str, doing: str) -> UpgraderError:
    if _TRANSIENT.search(text) or "timed out" in text.lower():
        return ClusterUnreachableError(
            f"the Kubernetes API did not answer{_while(doing)}: {text}", hint=_UNREACHABLE_HINT
        )
    return ApiError(
        f"TLS with the Kubernetes API failed{_while(doing)}: {text}",
        hint="check the server address and certificate authority of the kubeconfig context",
    )


def _denied(cls: type[_Denied], message: str, said: str, status: int | None) -> _Denied:
    """An access denial naming the verb and resource the API server says were refused, when it says."""
    m = _RBAC.search(said)
    if m is None:
        return cls(
            message, hint=f"the answer says why (RBAC, an admission policy, a quota); {_PREFLIGHT_HINT}", status=status
        )
    verb, resource, group, namespace = m["verb"], m["resource"], m["group"], m["namespace"] or ""
    where = f"in namespace {namespace}" if namespace else "cluster-wide"
    return cls(
        message,
        hint=f"grant {verb} on {resource}{'.' + group if group else ''} {where} to the identity upgrader runs as; "
        + _PREFLIGHT_HINT,
        status=status,
        verb=verb,
        resource=resource,
        group=group,
        namespace=namespace,
    )


def _from_helm(text: str) -> HelmError:  # noqa: PLR0911 - one return per kind of helm failure
    """helm's stderr (already redacted) as a typed error whose message is helm's own words."""
    if _LOCKED.search(text):
        return ReleaseLockedError(
            text,
            hint="wait for the other helm operation to end; if none is running, `helm history` shows the pending "
            "revision and `helm rollback` to the last deployed one clears it",
        )
    if _RELEASE_NOT_FOUND.search(text):
        return ReleaseNotFoundError(text, hint="`helm list -A` shows the releases there are")
    if _CHART_NOT_FOUND.search(text):
        return ChartNotFoundError(
            text,
            hint="add the chart repository (helm repo add linkerd https://helm.linkerd.io/stable) and "
            "run helm repo update",
        )
    if _HELM_DENIED.search(text):
        return _denied(HelmAccessDeniedError, text, text, None)
    if _TRANSIENT.search(text):
        if _UNREACHABLE.search(text):
            return HelmUnreachableError(text, hint=f"{_UNREACHABLE_HINT}; trying again may help")
        return TransientHelmError(text, hint=_TRANSIENT_HINT)
    return HelmError(text)


class HelmUnreachableError(TransientHelmError, ClusterUnreachableError):
    """helm could not reach the Kubernetes API (refused, reset, cluster unreachable): waited for like
    any unanswering API (``upgrader.adapters.retrying``), not only retried a few times."""
