"""Errors a user can see, sorted by what to do about them.

Every error carries the exit code the CLI returns for it and a hint naming the next step.
``retryable`` tells callers whether trying again can help (a cluster that is briefly
unreachable) or not (bad input).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3
EXIT_PREFLIGHT = 4


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


class ClusterUnreachableError(UpgraderError):
    """The Kubernetes API did not answer; retrying later may help."""

    retryable = True


class HelmError(UpgraderError):
    """A helm command failed; the message carries helm's own words (secrets redacted)."""


class TransientHelmError(HelmError):
    """helm failed on something passing (API 429/5xx, a dropped connection, an etcd leader change)."""

    retryable = True
