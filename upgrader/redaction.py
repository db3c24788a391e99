"""Keep secrets out of anything we print, log or store.

The issuer private key (``identity.issuer.tls.keyPEM`` in Linkerd's Helm values) and any
PEM private key are replaced by a marker that says a value was there and was redacted.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "<redacted>"

_PEM_PRIVATE_KEY = re.compile(r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.DOTALL)
_SENSITIVE_KEYS = frozenset({"keypem", "key.pem", "tls.key", "privatekey", "password", "token"})


def redact_text(text: str) -> str:
    """Replace every PEM private key block in ``text``."""
    return _PEM_PRIVATE_KEY.sub(REDACTED, text)


def redact_values(values: Any) -> Any:
    """A deep copy of Helm values with sensitive keys and private-key blocks redacted."""
    if isinstance(values, dict):
        return {
            k: (REDACTED if str(k).lower() in _SENSITIVE_KEYS and v not in (None, "") else redact_values(v))
            for k, v in values.items()
        }
    if isinstance(values, list):
        return [redact_values(v) for v in values]
    if isinstance(values, str):
        return redact_text(values)
    return values
