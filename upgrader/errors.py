"""Errors a user can see, sorted by what to do about them.

Every error carries the exit code the CLI returns for it and a hint naming the next step.
``retryable`` tells callers whether trying again can help: it is True exactly for
``TransientError`` and its subclasses (a cluster briefly unreachable, API throttling or 5xx,
an etcd leader change), which is also the only family the adapters' retry policy retries.

Outside failures (Kubernetes API answers, dropped connections, helm's stderr) become these
classes in one place, ``upgrader.adapters.errors.classify``; nothing else reads error text.

    UpgraderError
    ├── InputError                 bad input; nothing was changed
    ├── TransientError             passing; a retry may help (HTTP status when known)
    │   ├── ClusterUnreachableError    the API did not answer (refused, reset, timed out)
    │   └── TransientHelmError         ... reported by helm (also a HelmError)
    ├── AccessDeniedError          401/403; names the verb and resource when known
    │   └── HelmAccessDeniedError      ... reported by helm (also a HelmError)
    ├── NotFoundError              the object is not there (404)
    │   ├── ReleaseNotFoundError       helm: "release: not found" (also a HelmError)
    │   └── ChartNotFoundError         helm: the chart, its version or its repository is missing
    ├── ApiError                   the API refused for a lasting reason (400, 409, 422, TLS ...)
    └── HelmError                  helm failed for a lasting reason (helm's own words)
        └── ReleaseLockedError         another operation (install/upgrade/rollback) is in progress
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3
EXIT_PREFLIGHT = 4
EXIT_PAUSED = 5  # apply or resume ended Paused (a maintenance window, Prometheus not answering): resume later
EXIT_NEEDS_OPERATOR = 6  # apply --run-id of a run that stopped Failed, Paused on a gate or rolled back: never retried


class UpgraderError(Exception):
    """Base class: a message for people, a hint, an exit code and whether a retry helps."""

    exit_code = EXIT_FAILED
    retryable = False

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class InputError(UpgraderError):
    """The command line, a file or a value given to us is wrong; nothing was changed."""

    exit_code = EXIT_BAD_INPUT


class RunNeedsOperatorError(UpgraderError):
    """A named run that stopped for an operator (Failed, Paused on a gate, rolled back) is not continued unattended."""

    exit_code = EXIT_NEEDS_OPERATOR


class TransientError(UpgraderError):
    """Something passing failed (API 429/5xx, a dropped connection, a timeout); retrying later may help.

    ``status`` is the HTTP status when there was one; ``delay`` the seconds the server asked us
    to wait (Retry-After), if it did.
    """

    retryable = True

    def __init__(self, message: str, *, hint: str = "", status: int | None = None, delay: float | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.delay = delay


class ClusterUnreachableError(TransientError):
    """The Kubernetes API did not answer (connection refused or reset, a timeout); retrying later may help."""


class AccessDeniedError(UpgraderError):
    """The API refused a request (401/403); the message names what was refused and by whom, when known."""

    def __init__(
        self,
        message: str,
        *,
        hint: str = "",
        status: int | None = None,
        verb: str = "",
        resource: str = "",
        group: str = "",
        namespace: str = "",
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.verb, self.resource, self.group, self.namespace = verb, resource, group, namespace


class NotFoundError(UpgraderError):
    """The object asked for is not there (HTTP 404)."""


class NeverDeployedError(UpgraderError):
    """A Helm release with no deployed revision: no working values to carry (repair it with helm first)."""


class ApiError(UpgraderError):
    """The Kubernetes API refused a request for a lasting reason (400, 409, 422, TLS); retrying will not help."""

    def __init__(self, message: str, *, hint: str = "", status: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class HelmError(UpgraderError):
    """A helm command failed; the message carries helm's own words (secrets redacted)."""


class TransientHelmError(TransientError, HelmError):
    """helm failed on something passing (API 429/5xx, a dropped connection, an etcd leader change)."""


class HelmAccessDeniedError(AccessDeniedError, HelmError):
    """helm was refused by the API (forbidden, unauthorized)."""


class ReleaseNotFoundError(NotFoundError, HelmError):
    """helm has no record of the release ("release: not found")."""


class ChartNotFoundError(NotFoundError, HelmError):
    """helm cannot find the chart, its version or its repository (repository not added, index out of date)."""


class ReleaseLockedError(HelmError):
    """helm refuses: another operation (install/upgrade/rollback) is in progress on the release (pending-*).

    Not retried: it lasts until the other operation ends or the release is rolled back. The
    message keeps helm's words ("another operation (install/upgrade/rollback) is in progress").
    """
