"""Identity preflight: trust anchors and issuer parse, use ECDSA P-256, outlive the run, chain, and match the values."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from e2e.fixtures.identity import Identity, make_identity
from upgrader.preflight import CheckResult
from upgrader.preflight.identity import CHECK_IDS, check_identity

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _run(identity: Identity, **overrides: Any) -> dict[str, CheckResult]:
    kwargs: dict[str, Any] = {
        "trust_anchors_pem": identity.trust_anchor_pem,
        "issuer_crt_pem": identity.issuer_crt_pem,
        "scheme": "linkerd.io/tls",
        "values_trust_anchors_pem": None,
        "now": NOW,
    }
    kwargs.update(overrides)
    results = check_identity(**kwargs)
    assert [r.id for r in results] == list(CHECK_IDS)
    return {r.id: r for r in results}


def _failing(results: dict[str, CheckResult]) -> set[str]:
    return {id for id, r in results.items() if r.result != "passed"}


def _ca(
    cn: str,
    key: SigningKey,
    signer: tuple[x509.Certificate, SigningKey] | None = None,
    *,
    days: float = 365,
) -> x509.Certificate:
    """A CA certificate valid from an hour before NOW for ``days``, self-signed unless ``signer`` is given."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, signing_key = (signer[0].subject, signer[1]) if signer else (subject, key)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(signing_key, hashes.SHA256())
    )


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def test_healthy_identity_passes_every_check_once() -> None:
    """A fresh anchor and issuer pass all checks, each id reported exactly once, as errors in `identity`."""
    results = check_identity(
        trust_anchors_pem=(ident := make_identity(now=NOW)).trust_anchor_pem,
        issuer_crt_pem=ident.issuer_crt_pem,
        scheme="linkerd.io/tls",
        values_trust_anchors_pem=ident.trust_anchor_pem,
        now=NOW,
    )
    assert sorted(r.id for r in results) == sorted(CHECK_IDS)
    assert len(results) == len(set(CHECK_IDS)) == 8
    assert all(r.result == "passed" for r in results), [r.message for r in results if r.result != "passed"]
    assert {(r.category, r.severity) for r in results} == {("identity", "error")}


@pytest.mark.parametrize(
    ("make", "overrides", "failing", "expected"),
    [
        pytest.param(
            {"issuer_days": 10},
            {},
            "identity.issuer-validity",
            "expires on 2026-03-11T12:00:00+00:00, in 10 days; at least 60 days required",
            id="issuer expiring in 10 days is too soon for the 60-day minimum",
        ),
        pytest.param(
            {"issuer_expired": True},
            {},
            "identity.issuer-validity",
            "expired on 2026-02-28T12:00:00+00:00",
            id="expired issuer",
        ),
        pytest.param(
            {"issuer_days": 1},
            {"min_valid_days": 0, "run_hours": 48},
            "identity.issuer-validity",
            "before the planned run ends (estimated 48 hours, until 2026-03-03T12:00:00+00:00)",
            id="issuer valid one day does not outlive a 48-hour run",
        ),
        pytest.param(
            {"issuer_days": 70},
            {"run_hours": 24 * 71},
            "identity.issuer-validity",
            "in 70 days, before the planned run ends",
            id="issuer valid 70 days passes the minimum but not a 71-day run",
        ),
        pytest.param(
            {"anchor_days": 30},
            {},
            "identity.trust-anchors-validity",
            "expires on 2026-03-31T12:00:00+00:00, in 30 days; at least 60 days required",
            id="trust anchor expiring in 30 days",
        ),
        pytest.param(
            {"issuer_days": 0.25},
            {"min_valid_days": 1},
            "identity.issuer-validity",
            "in 6 hours; at least 1 days required",
            id="issuer with hours left says hours",
        ),
    ],
)
def test_validity_failures(make: dict[str, Any], overrides: dict[str, Any], failing: str, expected: str) -> None:
    """A certificate that expires too soon fails only its validity check, saying when and how soon."""
    results = _run(make_identity(now=NOW, **make), **overrides)
    assert _failing(results) == {failing}
    assert expected in results[failing].message
    assert "linkerd-identity" in results[failing].message
    assert results[failing].hint


@pytest.mark.parametrize(
    ("make", "overrides"),
    [
        pytest.param({"issuer_days": 70}, {"run_hours": 24}, id="issuer valid 70 days outlives a day-long run"),
        pytest.param({"issuer_days": 60}, {}, id="exactly 60 days left is enough"),
        pytest.param({"issuer_days": 1}, {"min_valid_days": 0, "run_hours": 2}, id="a short run needs only hours"),
    ],
)
def test_validity_passes(make: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Certificates valid for the minimum and past the run's end pass."""
    assert _failing(_run(make_identity(now=NOW, **make), **overrides)) == set()


def test_not_yet_valid_certificates_fail() -> None:
    """Certificates whose validity starts in the future fail both validity checks."""
    results = _run(make_identity(now=NOW + dt.timedelta(days=2)))
    assert _failing(results) == {"identity.trust-anchors-validity", "identity.issuer-validity"}
    assert "is not valid until 2026-03-03T11:00:00+00:00" in results["identity.issuer-validity"].message


def test_mismatched_issuer_is_not_signed_by_anchor() -> None:
    """An issuer signed by another anchor than the cluster's fails the chain check and only that."""
    results = _run(make_identity(now=NOW, mismatched=True))
    assert _failing(results) == {"identity.issuer-signed-by-anchor"}
    result = results["identity.issuer-signed-by-anchor"]
    assert "is not signed by the trust anchor in ConfigMap linkerd/linkerd-identity-trust-roots" in result.message
    assert "step certificate create identity.linkerd.cluster.local" in result.hint


def test_issuer_signed_by_second_anchor_of_rotation_bundle_passes() -> None:
    """During anchor rotation the bundle holds old and new anchors; an issuer from the new one passes."""
    old, new = make_identity(now=NOW), make_identity(now=NOW)
    bundle = old.trust_anchor_pem + new.trust_anchor_pem
    results = _run(new, trust_anchors_pem=bundle, values_trust_anchors_pem=bundle)
    assert _failing(results) == set()
    assert "trust anchor 2 of 2" in results["identity.issuer-signed-by-anchor"].message
    assert "holds 2 trust anchors" in results["identity.trust-anchors-parse"].message


def test_issuer_with_intermediate_chain_passes() -> None:
    """An issuer PEM followed by its intermediate (as cert-manager may write) chains to the anchor."""
    root_key, mid_key, issuer_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _ca("root.linkerd.cluster.local", root_key, days=3650)
    mid = _ca("intermediate.linkerd.cluster.local", mid_key, (root, root_key), days=1000)
    issuer = _ca("identity.linkerd.cluster.local", issuer_key, (mid, mid_key))
    results = check_identity(
        trust_anchors_pem=_pem(root),
        issuer_crt_pem=_pem(issuer, mid),
        scheme="kubernetes.io/tls",
        values_trust_anchors_pem=None,
        now=NOW,
    )
    assert all(r.result == "passed" for r in results)
    signed = next(r for r in results if r.id == "identity.issuer-signed-by-anchor")
    assert "through 1 intermediate" in signed.message


@pytest.mark.parametrize(
    ("anchor_key", "issuer_key", "failing", "found"),
    [
        pytest.param(
            rsa.generate_private_key(65537, 2048),
            rsa.generate_private_key(65537, 2048),
            {"identity.trust-anchors-algorithm", "identity.issuer-algorithm"},
            "RSA 2048",
            id="RSA-2048 anchor and issuer fail both algorithm checks",
        ),
        pytest.param(
            ec.generate_private_key(ec.SECP256R1()),
            ec.generate_private_key(ec.SECP384R1()),
            {"identity.issuer-algorithm"},
            "ECDSA P-384",
            id="P-384 issuer under a P-256 anchor fails the issuer's algorithm check",
        ),
        pytest.param(
            rsa.generate_private_key(65537, 2048),
            ec.generate_private_key(ec.SECP256R1()),
            {"identity.trust-anchors-algorithm"},
            "RSA 2048",
            id="RSA-2048 anchor over a P-256 issuer fails the anchors' algorithm check",
        ),
    ],
)
def test_unsupported_algorithms(anchor_key: SigningKey, issuer_key: SigningKey, failing: set[str], found: str) -> None:
    """Keys other than ECDSA P-256 fail the algorithm check, naming the algorithm found."""
    anchor = _ca("root.linkerd.cluster.local", anchor_key, days=3650)
    issuer = _ca("identity.linkerd.cluster.local", issuer_key, (anchor, anchor_key))
    results = check_identity(
        trust_anchors_pem=_pem(anchor),
        issuer_crt_pem=_pem(issuer),
        scheme="linkerd.io/tls",
        values_trust_anchors_pem=None,
        now=NOW,
    )
    by_id = {r.id: r for r in results}
    assert _failing(by_id) == failing
    for id in failing:
        assert found in by_id[id].message
        assert "Linkerd supports only ECDSA P-256" in by_id[id].message


GOOD = make_identity(now=NOW)
_CERT_BODY = GOOD.trust_anchor_pem.splitlines()[1]


@pytest.mark.parametrize(
    ("bundle", "expected"),
    [
        pytest.param(None, "is missing or empty", id="no bundle"),
        pytest.param("  \n", "is missing or empty", id="blank bundle"),
        pytest.param("not a certificate", "holds no PEM block", id="text without PEM blocks"),
        pytest.param(
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
            "PEM block 1 of 1 does not parse as an X.509 certificate",
            id="certificate block that is not DER",
        ),
        pytest.param(
            GOOD.trust_anchor_pem + "-----BEGIN CERTIFICATE-----\n%%%\n-----END CERTIFICATE-----\n",
            "PEM block 2 of 2 does not parse",
            id="good anchor followed by garbage",
        ),
        pytest.param(
            GOOD.trust_anchor_pem + "-----BEGIN CERTIFICATE-----\n" + _CERT_BODY,
            "without its matching END line",
            id="truncated second block",
        ),
        pytest.param(GOOD.issuer_key_pem, "is a PRIVATE KEY, not a CERTIFICATE", id="a private key in the bundle"),
    ],
)
def test_unparsable_trust_anchors(bundle: str | None, expected: str) -> None:
    """A missing or broken bundle fails parsing and the checks that need anchors say they cannot check."""
    results = _run(GOOD, trust_anchors_pem=bundle, values_trust_anchors_pem=GOOD.trust_anchor_pem)
    assert _failing(results) == {
        "identity.trust-anchors-parse",
        "identity.trust-anchors-algorithm",
        "identity.trust-anchors-validity",
        "identity.issuer-signed-by-anchor",
        "identity.anchors-match-values",
    }
    assert expected in results["identity.trust-anchors-parse"].message
    assert "ConfigMap linkerd/linkerd-identity-trust-roots" in results["identity.trust-anchors-parse"].message
    assert results["identity.issuer-signed-by-anchor"].message.startswith("cannot check: ")
    assert results["identity.anchors-match-values"].message.startswith("cannot check: ")


def test_unparsable_issuer_fails_parse_and_cannot_check_the_chain() -> None:
    """Garbage in the issuer Secret fails its parse check; the others that need it cannot check."""
    results = _run(GOOD, issuer_crt_pem="garbage")
    assert _failing(results) == {
        "identity.issuer-parse",
        "identity.issuer-algorithm",
        "identity.issuer-validity",
        "identity.issuer-signed-by-anchor",
    }
    assert "Secret linkerd/linkerd-identity-issuer (crt.pem) holds no PEM block" in (
        results["identity.issuer-parse"].message
    )
    assert results["identity.issuer-signed-by-anchor"].message == (
        "cannot check: the issuer certificate in Secret linkerd/linkerd-identity-issuer (crt.pem) did not parse "
        "(see identity.issuer-parse)"
    )


def test_private_key_given_as_issuer_is_never_echoed() -> None:
    """A key pasted where the certificate belongs is named by its PEM label; no key material reaches a report."""
    results = _run(GOOD, issuer_crt_pem=GOOD.issuer_key_pem)
    assert "is a PRIVATE KEY, not a CERTIFICATE" in results["identity.issuer-parse"].message
    key_lines = [line for line in GOOD.issuer_key_pem.splitlines() if not line.startswith("-----")]
    text = "".join(r.message + r.hint for r in results.values())
    assert not any(line in text for line in key_lines)


def _reformat(pem: str) -> str:
    """The same certificates with CRLF line ends and blank lines around them."""
    return "\n\n" + pem.replace("\n", "\r\n") + "\n  \n"


OTHER = make_identity(now=NOW)


@pytest.mark.parametrize(
    ("cluster", "values", "ok", "expected"),
    [
        pytest.param(
            GOOD.trust_anchor_pem, None, True, "no trust anchors in the values to compare", id="values carry no anchors"
        ),
        pytest.param(
            GOOD.trust_anchor_pem,
            GOOD.trust_anchor_pem,
            True,
            "holds the same 1 anchor as ConfigMap linkerd/linkerd-identity-trust-roots",
            id="same anchor",
        ),
        pytest.param(
            GOOD.trust_anchor_pem + OTHER.trust_anchor_pem,
            _reformat(OTHER.trust_anchor_pem) + _reformat(GOOD.trust_anchor_pem),
            True,
            "holds the same 2 anchors",
            id="same anchors in another order and whitespace",
        ),
        pytest.param(
            GOOD.trust_anchor_pem,
            OTHER.trust_anchor_pem,
            False,
            "the values carry 1 anchor(s) the cluster does not trust",
            id="different anchor in the values",
        ),
        pytest.param(
            GOOD.trust_anchor_pem + OTHER.trust_anchor_pem,
            GOOD.trust_anchor_pem,
            False,
            "the values omit 1 anchor(s) the cluster trusts",
            id="values drop an anchor the cluster trusts",
        ),
        pytest.param(
            GOOD.trust_anchor_pem,
            "",
            False,
            "identityTrustAnchorsPEM in the Helm values is missing or empty",
            id="empty anchors in the values",
        ),
        pytest.param(
            GOOD.trust_anchor_pem,
            "junk",
            False,
            "identityTrustAnchorsPEM in the Helm values holds no PEM block",
            id="junk anchors in the values",
        ),
    ],
)
def test_anchors_match_values(cluster: str, values: str | None, ok: bool, expected: str) -> None:
    """The values' anchors must be the cluster's, as a set of certificates, or the upgrade mismatches trust."""
    result = _run(GOOD, trust_anchors_pem=cluster, values_trust_anchors_pem=values)["identity.anchors-match-values"]
    assert (result.result == "passed") is ok
    assert expected in result.message
    if not ok:
        assert "get cm linkerd-identity-trust-roots -o jsonpath='{.data.ca-bundle\\.crt}'" in result.hint
        assert "rotation procedure" in result.hint


def test_cert_manager_issuer_hint_points_at_certificate_resource() -> None:
    """With kubernetes.io/tls an expiring issuer names tls.crt and says cert-manager renews it."""
    results = _run(make_identity(now=NOW, issuer_days=10), scheme="kubernetes.io/tls", namespace="mesh")
    result = results["identity.issuer-validity"]
    assert result.result == "error"
    assert "Secret mesh/linkerd-identity-issuer (tls.crt)" in result.message
    assert "cert-manager renews" in result.hint
    assert "kubectl -n mesh describe certificate linkerd-identity-issuer" in result.hint


def test_linkerd_scheme_issuer_hint_names_step_rotation() -> None:
    """With linkerd.io/tls an expiring issuer's hint gives the step command and how to inspect the Secret."""
    result = _run(make_identity(now=NOW, issuer_days=10))["identity.issuer-validity"]
    assert "step certificate create identity.linkerd.cluster.local" in result.hint
    assert "--ca ca.crt" in result.hint
    assert "kubectl -n linkerd get secret linkerd-identity-issuer" in result.hint


def test_naive_now_is_refused() -> None:
    """Time must be timezone-aware; a naive datetime is a programming error."""
    with pytest.raises(ValueError, match="timezone-aware"):
        _run(GOOD, now=dt.datetime(2026, 3, 1, 12, 0))
