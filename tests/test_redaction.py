"""Secrets never leave through values dumps or error text."""

from __future__ import annotations

from upgrader.redaction import REDACTED, redact_text, redact_values

KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----"


def test_issuer_key_in_values_is_redacted_and_the_rest_kept() -> None:
    """identity.issuer.tls.keyPEM is replaced; the certificate and other keys are kept."""
    values = {"identity": {"issuer": {"tls": {"crtPEM": "CERT", "keyPEM": KEY}}}, "controllerReplicas": 3}
    out = redact_values(values)
    assert out["identity"]["issuer"]["tls"] == {"crtPEM": "CERT", "keyPEM": REDACTED}
    assert out["controllerReplicas"] == 3
    assert values["identity"]["issuer"]["tls"]["keyPEM"] == KEY, "the input is not modified"


def test_private_key_blocks_inside_text_are_redacted() -> None:
    """A PEM private key anywhere in a string (an error message, a list item) is removed."""
    assert redact_text(f"error: bad value {KEY} here") == f"error: bad value {REDACTED} here"
    assert redact_values({"extra": [f"x{KEY}"]}) == {"extra": [f"x{REDACTED}"]}
    assert redact_text("-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----") == REDACTED


def test_empty_sensitive_values_stay_empty() -> None:
    """An empty keyPEM is shown as empty, so a missing key is visible in a diff."""
    assert redact_values({"keyPEM": ""}) == {"keyPEM": ""}
