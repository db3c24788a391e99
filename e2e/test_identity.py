"""The fixture identity certificates have the validity and chain asked for (pure; no cluster)."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from e2e.fixtures.identity import ANCHOR_CN, ISSUER_CN, make_identity

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def test_default_identity_is_an_ecdsa_chain_valid_for_a_year() -> None:
    """The issuer is an ECDSA P-256 CA signed by the trust anchor, valid for 365 days."""
    ident = make_identity(now=NOW)
    anchor, issuer = _cert(ident.trust_anchor_pem), _cert(ident.issuer_crt_pem)
    assert anchor.subject.rfc4514_string() == f"CN={ANCHOR_CN}"
    assert issuer.subject.rfc4514_string() == f"CN={ISSUER_CN}"
    assert isinstance(issuer.public_key(), ec.EllipticCurvePublicKey)
    assert issuer.public_key().curve.name == "secp256r1"
    assert issuer.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert _signed_by(issuer, anchor)
    assert issuer.not_valid_after_utc - NOW == dt.timedelta(days=365)
    assert "PRIVATE KEY" in ident.issuer_key_pem


def test_issuer_expiring_in_ten_days() -> None:
    """issuer_days=10 makes an issuer that is valid now and expires in ten days."""
    issuer = _cert(make_identity(issuer_days=10, now=NOW).issuer_crt_pem)
    assert issuer.not_valid_before_utc < NOW < issuer.not_valid_after_utc
    assert issuer.not_valid_after_utc - NOW == dt.timedelta(days=10)


def test_expired_issuer() -> None:
    """issuer_expired makes an issuer whose validity ended before now."""
    issuer = _cert(make_identity(issuer_expired=True, now=NOW).issuer_crt_pem)
    assert issuer.not_valid_after_utc < NOW


def test_mismatched_issuer_is_not_signed_by_the_returned_anchor() -> None:
    """mismatched returns an anchor that did not sign the issuer."""
    ident = make_identity(mismatched=True, now=NOW)
    assert not _signed_by(_cert(ident.issuer_crt_pem), _cert(ident.trust_anchor_pem))


def test_values_carry_the_certificates_where_the_chart_reads_them() -> None:
    """values() puts the anchor and issuer under the chart's keys."""
    ident = make_identity(now=NOW)
    values = ident.values()
    assert values["identityTrustAnchorsPEM"] == ident.trust_anchor_pem
    assert values["identity"]["issuer"]["tls"] == {"crtPEM": ident.issuer_crt_pem, "keyPEM": ident.issuer_key_pem}
