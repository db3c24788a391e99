"""Identity preflight: the trust anchors and the issuer certificate, as `linkerd check` sees them.

``check_identity`` is pure: it takes the PEM text an adapter read (the trust bundle from
ConfigMap ``linkerd-identity-trust-roots``, the issuer certificate from Secret
``linkerd-identity-issuer``, the anchors in the Helm values about to be sent) and the time,
and returns one ``CheckResult`` per id in ``CHECK_IDS``, always all of them, in that order.
A check that depends on a certificate that did not parse fails with "cannot check: ...".

It never receives private keys, and messages only name certificates by subject and
SHA-256 fingerprint, so no key material can reach a report.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from upgrader.preflight import CheckResult, failed, passed

CATEGORY = "identity"

ANCHORS_PARSE = "identity.trust-anchors-parse"
ANCHORS_ALGORITHM = "identity.trust-anchors-algorithm"
ANCHORS_VALIDITY = "identity.trust-anchors-validity"
ISSUER_PARSE = "identity.issuer-parse"
ISSUER_ALGORITHM = "identity.issuer-algorithm"
ISSUER_VALIDITY = "identity.issuer-validity"
ISSUER_SIGNED = "identity.issuer-signed-by-anchor"
ANCHORS_MATCH_VALUES = "identity.anchors-match-values"

CHECK_IDS: tuple[str, ...] = (
    ANCHORS_PARSE,
    ANCHORS_ALGORITHM,
    ANCHORS_VALIDITY,
    ISSUER_PARSE,
    ISSUER_ALGORITHM,
    ISSUER_VALIDITY,
    ISSUER_SIGNED,
    ANCHORS_MATCH_VALUES,
)

SCHEME_LINKERD = "linkerd.io/tls"
SCHEME_KUBERNETES = "kubernetes.io/tls"
SUPPORTED_ALGORITHM = "ECDSA P-256"

_ISSUER_KEYS = {SCHEME_LINKERD: "crt.pem", SCHEME_KUBERNETES: "tls.crt"}
_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521", "secp224r1": "P-224"}
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
_STEP_ISSUER = (
    "step certificate create identity.linkerd.cluster.local issuer.crt issuer.key "
    "--profile intermediate-ca --not-after 8760h --no-password --insecure --ca ca.crt --ca-key ca.key"
)
_STEP_ANCHOR = (
    "step certificate create root.linkerd.cluster.local ca-new.crt ca-new.key "
    "--profile root-ca --not-after 87600h --no-password --insecure"
)


@dataclass(frozen=True)
class _Parsed:
    """Certificates from one PEM text, or why it could not be read (never the text itself)."""

    certs: tuple[x509.Certificate, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class _Objects:
    """Names and commands for the objects of one installation, for messages and hints."""

    namespace: str
    scheme: str

    @property
    def bundle(self) -> str:
        return f"ConfigMap {self.namespace}/linkerd-identity-trust-roots (ca-bundle.crt)"

    @property
    def issuer_key(self) -> str:
        return _ISSUER_KEYS.get(self.scheme, "crt.pem")

    @property
    def issuer(self) -> str:
        return f"Secret {self.namespace}/linkerd-identity-issuer ({self.issuer_key})"

    @property
    def cert_manager(self) -> bool:
        return self.scheme == SCHEME_KUBERNETES

    @property
    def show_bundle(self) -> str:
        return (
            f"kubectl -n {self.namespace} get cm linkerd-identity-trust-roots -o jsonpath='{{.data.ca-bundle\\.crt}}'"
        )

    @property
    def show_issuer(self) -> str:
        key = self.issuer_key.replace(".", "\\.")
        return (
            f"kubectl -n {self.namespace} get secret linkerd-identity-issuer "
            f"-o jsonpath='{{.data.{key}}}' | base64 -d | step certificate inspect -"
        )

    @property
    def describe_certificate(self) -> str:
        return f"kubectl -n {self.namespace} describe certificate linkerd-identity-issuer"

    def issuer_fix(self) -> str:
        """How to get a new issuer certificate under this scheme."""
        if self.cert_manager:
            return (
                f"cert-manager renews this issuer: check the Certificate resource with "
                f"`{self.describe_certificate}` (Ready condition, duration and renewBefore, its Issuer) "
                f"and cert-manager's logs; `kubectl -n {self.namespace} get secret linkerd-identity-issuer` "
                "shows what it wrote."
            )
        return (
            f"Rotate the issuer as Linkerd's docs describe: `{_STEP_ISSUER}` (ca.crt/ca.key are the trust "
            "anchor's), then pass issuer.crt and issuer.key as identity.issuer.tls.crtPEM and keyPEM. "
            f"Inspect the current one with `{self.show_issuer}`."
        )

    def anchor_fix(self) -> str:
        """How to replace trust anchors without breaking mTLS."""
        hint = (
            "Follow Linkerd's trust-anchor rotation procedure: create a new anchor "
            f"(`{_STEP_ANCHOR}`), bundle it with the current one in identityTrustAnchorsPEM, upgrade, "
            "restart meshed workloads, rotate the issuer onto the new anchor, then drop the old one. "
            f"Inspect the bundle with `{self.show_bundle}`."
        )
        if self.cert_manager:
            hint += " If cert-manager or trust-manager manages the anchor, check its Certificate or Bundle resource."
        return hint


def check_identity(
    *,
    trust_anchors_pem: str | None,
    issuer_crt_pem: str | None,
    scheme: str,
    values_trust_anchors_pem: str | None,
    now: dt.datetime,
    min_valid_days: int = 60,
    run_hours: float = 0.0,
    namespace: str = "linkerd",
) -> list[CheckResult]:
    """One result per id in ``CHECK_IDS``: parse, algorithm and validity of anchors and issuer, the chain, the values.

    ``now`` must be timezone-aware; certificates must stay valid for ``min_valid_days`` and
    past ``now + run_hours`` (the planned run's estimated length).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (UTC)")
    now = now.astimezone(dt.UTC)
    objects = _Objects(namespace=namespace, scheme=scheme)
    anchors = _parse(trust_anchors_pem)
    issuer = _parse(issuer_crt_pem)
    window = _Window(now=now, min_valid_days=min_valid_days, run_hours=run_hours)
    return [
        _anchors_parse(anchors, objects),
        _anchors_algorithm(anchors, objects),
        _anchors_validity(anchors, objects, window),
        _issuer_parse(issuer, objects),
        _issuer_algorithm(issuer, objects),
        _issuer_validity(issuer, objects, window),
        _issuer_signed(anchors, issuer, objects),
        _anchors_match_values(anchors, values_trust_anchors_pem, objects),
    ]


# Parsing and describing certificates


def _parse(pem: str | None) -> _Parsed:
    if pem is None or not pem.strip():
        return _Parsed(error="is missing or empty")
    blocks = list(_PEM_BLOCK.finditer(pem))
    if not blocks:
        return _Parsed(error="holds no PEM block (expected -----BEGIN CERTIFICATE-----)")
    if pem.count("-----BEGIN ") != len(blocks):
        return _Parsed(error="holds a PEM block without its matching END line (truncated?)")
    certs: list[x509.Certificate] = []
    for number, block in enumerate(blocks, start=1):
        where = f"PEM block {number} of {len(blocks)}"
        if block.group(1) != "CERTIFICATE":
            return _Parsed(error=f"{where} is a {block.group(1)}, not a CERTIFICATE")
        try:
            certs.append(x509.load_pem_x509_certificate(block.group(0).encode()))
        except ValueError:
            return _Parsed(error=f"{where} does not parse as an X.509 certificate")
    return _Parsed(certs=tuple(certs))


def _describe(cert: x509.Certificate) -> str:
    subject = cert.subject.rfc4514_string() or "(empty subject)"
    return f"{subject} (SHA-256 {cert.fingerprint(hashes.SHA256()).hex()[:16]})"


def _label(kind: str, index: int, count: int) -> str:
    return f"{kind} {index + 1} of {count}" if count > 1 else kind


def _algorithm(cert: x509.Certificate) -> str:
    try:
        key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        return "an unsupported public key algorithm"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {_CURVES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPublicKey | dsa.DSAPublicKey):
        return f"{'RSA' if isinstance(key, rsa.RSAPublicKey) else 'DSA'} {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448"
    return type(key).__name__


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _span(delta: dt.timedelta) -> str:
    if delta >= dt.timedelta(days=1):
        return f"{delta.days} day" + ("s" if delta.days != 1 else "")
    hours = int(delta.total_seconds() // 3600)
    if hours >= 1:
        return f"{hours} hour" + ("s" if hours != 1 else "")
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes} minute" + ("s" if minutes != 1 else "")


@dataclass(frozen=True)
class _Window:
    """When certificates must be valid: now, for ``min_valid_days``, and until the run ends."""

    now: dt.datetime
    min_valid_days: int
    run_hours: float

    @property
    def run_end(self) -> dt.datetime:
        return self.now + dt.timedelta(hours=self.run_hours)

    def problem(self, cert: x509.Certificate) -> str | None:
        """Why ``cert`` is not valid long enough, or None."""
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
        if self.now < start:
            return f"is not valid until {_iso(start)}"
        if self.now >= end:
            return f"expired on {_iso(end)}"
        left = end - self.now
        if left < dt.timedelta(days=self.min_valid_days):
            return f"expires on {_iso(end)}, in {_span(left)}; at least {self.min_valid_days} days required"
        if end <= self.run_end:
            return (
                f"expires on {_iso(end)}, in {_span(left)}, before the planned run ends "
                f"(estimated {self.run_hours:g} hours, until {_iso(self.run_end)})"
            )
        return None

    def summary(self, cert: x509.Certificate) -> str:
        end = cert.not_valid_after_utc
        return f"valid until {_iso(end)}, in {_span(end - self.now)} (at least {self.min_valid_days} days required)"


def _cannot_check(id: str, what: str, parsed_id: str, hint: str) -> CheckResult:
    return failed(id, CATEGORY, f"cannot check: {what} did not parse (see {parsed_id})", hint)


# Trust anchors


def _anchors_parse(anchors: _Parsed, objects: _Objects) -> CheckResult:
    if anchors.error is not None:
        return failed(
            ANCHORS_PARSE,
            CATEGORY,
            f"{objects.bundle} {anchors.error}; expected one or more PEM X.509 trust anchor certificates",
            f"Restore the trust bundle: set identityTrustAnchorsPEM to the anchors' certificates (never keys) "
            f"and check it with `{objects.show_bundle} | step certificate inspect --bundle -`. "
            "With identity.externalCA the ConfigMap must be created before the control plane.",
        )
    count = len(anchors.certs)
    return passed(
        ANCHORS_PARSE,
        CATEGORY,
        f"{objects.bundle} holds {count} trust anchor" + ("s" if count != 1 else "") + ", all X.509 certificates",
    )


def _anchors_algorithm(anchors: _Parsed, objects: _Objects) -> CheckResult:
    hint = objects.anchor_fix()
    if anchors.error is not None:
        return _cannot_check(ANCHORS_ALGORITHM, f"the trust anchors in {objects.bundle}", ANCHORS_PARSE, hint)
    count = len(anchors.certs)
    wrong = [
        f"{_label('trust anchor', i, count)} {_describe(cert)} uses {algorithm}"
        for i, cert in enumerate(anchors.certs)
        if (algorithm := _algorithm(cert)) != SUPPORTED_ALGORITHM
    ]
    if wrong:
        return failed(
            ANCHORS_ALGORITHM,
            CATEGORY,
            f"{objects.bundle}: " + "; ".join(wrong) + f"; Linkerd supports only {SUPPORTED_ALGORITHM}",
            hint,
        )
    return passed(ANCHORS_ALGORITHM, CATEGORY, f"every trust anchor in {objects.bundle} uses {SUPPORTED_ALGORITHM}")


def _anchors_validity(anchors: _Parsed, objects: _Objects, window: _Window) -> CheckResult:
    hint = objects.anchor_fix()
    if anchors.error is not None:
        return _cannot_check(ANCHORS_VALIDITY, f"the trust anchors in {objects.bundle}", ANCHORS_PARSE, hint)
    count = len(anchors.certs)
    problems = [
        f"{_label('trust anchor', i, count)} {_describe(cert)} {problem}"
        for i, cert in enumerate(anchors.certs)
        if (problem := window.problem(cert)) is not None
    ]
    if problems:
        return failed(ANCHORS_VALIDITY, CATEGORY, f"{objects.bundle}: " + "; ".join(problems), hint)
    first = min(anchors.certs, key=lambda cert: cert.not_valid_after_utc)
    which = "the trust anchor" if count == 1 else f"the first of {count} trust anchors to expire"
    return passed(ANCHORS_VALIDITY, CATEGORY, f"{objects.bundle}: {which} is {window.summary(first)}")


# Issuer


def _issuer_parse(issuer: _Parsed, objects: _Objects) -> CheckResult:
    if issuer.error is None:
        return passed(ISSUER_PARSE, CATEGORY, f"the issuer certificate in {objects.issuer} parses")
    if objects.cert_manager:
        hint = (
            f"cert-manager writes {objects.issuer_key}: check the Certificate resource with "
            f"`{objects.describe_certificate}` and `kubectl -n {objects.namespace} get secret "
            "linkerd-identity-issuer`."
        )
    else:
        hint = (
            f"Check the Secret with `{objects.show_issuer}`; if it is damaged, re-create the issuer with "
            f"`{_STEP_ISSUER}` and pass it as identity.issuer.tls.crtPEM and keyPEM."
        )
    return failed(
        ISSUER_PARSE,
        CATEGORY,
        f"{objects.issuer} {issuer.error}; expected a PEM X.509 issuer certificate",
        hint,
    )


def _issuer_algorithm(issuer: _Parsed, objects: _Objects) -> CheckResult:
    if objects.cert_manager:
        hint = (
            "Set spec.privateKey.algorithm: ECDSA and spec.privateKey.size: 256 on the Certificate resource "
            f"(`{objects.describe_certificate}`); cert-manager then re-issues it."
        )
    else:
        hint = objects.issuer_fix()
    if issuer.error is not None:
        return _cannot_check(ISSUER_ALGORITHM, f"the issuer certificate in {objects.issuer}", ISSUER_PARSE, hint)
    cert = issuer.certs[0]
    algorithm = _algorithm(cert)
    if algorithm != SUPPORTED_ALGORITHM:
        return failed(
            ISSUER_ALGORITHM,
            CATEGORY,
            f"the issuer certificate {_describe(cert)} in {objects.issuer} uses {algorithm}; "
            f"Linkerd supports only {SUPPORTED_ALGORITHM}",
            hint,
        )
    return passed(ISSUER_ALGORITHM, CATEGORY, f"the issuer certificate in {objects.issuer} uses {SUPPORTED_ALGORITHM}")


def _issuer_validity(issuer: _Parsed, objects: _Objects, window: _Window) -> CheckResult:
    hint = objects.issuer_fix()
    if issuer.error is not None:
        return _cannot_check(ISSUER_VALIDITY, f"the issuer certificate in {objects.issuer}", ISSUER_PARSE, hint)
    cert = issuer.certs[0]
    problem = window.problem(cert)
    if problem is not None:
        return failed(
            ISSUER_VALIDITY, CATEGORY, f"the issuer certificate {_describe(cert)} in {objects.issuer} {problem}", hint
        )
    return passed(ISSUER_VALIDITY, CATEGORY, f"the issuer certificate in {objects.issuer} is {window.summary(cert)}")


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _signing_anchor(
    issuer: x509.Certificate, chain: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate]
) -> tuple[int, int] | None:
    """(index of the anchor, intermediates used) for the first anchor the issuer chains to, or None.

    ``chain`` is what follows the issuer in its PEM (cert-manager may add intermediates).
    """
    current, used = issuer, 0
    for _ in range(len(chain) + 1):
        for index, anchor in enumerate(anchors):
            if _issued_by(current, anchor):
                return index, used
        parent = next((c for c in chain if c is not current and _issued_by(current, c)), None)
        if parent is None:
            return None
        current, used = parent, used + 1
    return None


def _issuer_signed(anchors: _Parsed, issuer: _Parsed, objects: _Objects) -> CheckResult:
    if objects.cert_manager:
        hint = (
            "The Issuer that cert-manager uses for the Certificate linkerd-identity-issuer must sign with the "
            f"trust anchor's key: check it with `{objects.describe_certificate}` and compare its CA with "
            f"`{objects.show_bundle}`."
        )
    else:
        hint = (
            f"Re-create the issuer signed by the current trust anchor (`{_STEP_ISSUER}` with that anchor's "
            "ca.crt/ca.key), or add the anchor that signed it to identityTrustAnchorsPEM. "
            f"Compare `{objects.show_issuer}` with `{objects.show_bundle}`."
        )
    if anchors.error is not None:
        return _cannot_check(ISSUER_SIGNED, f"the trust anchors in {objects.bundle}", ANCHORS_PARSE, hint)
    if issuer.error is not None:
        return _cannot_check(ISSUER_SIGNED, f"the issuer certificate in {objects.issuer}", ISSUER_PARSE, hint)
    cert, *chain = issuer.certs
    found = _signing_anchor(cert, chain, anchors.certs)
    count = len(anchors.certs)
    if found is None:
        return failed(
            ISSUER_SIGNED,
            CATEGORY,
            f"the issuer certificate {_describe(cert)} in {objects.issuer} is not signed by "
            + ("the trust anchor" if count == 1 else f"any of the {count} trust anchors")
            + f" in {objects.bundle}; "
            "proxies would reject the certificates identity issues",
            hint,
        )
    index, used = found
    through = f" through {used} intermediate" + ("s" if used != 1 else "") if used else ""
    return passed(
        ISSUER_SIGNED,
        CATEGORY,
        f"the issuer certificate in {objects.issuer} is signed{through} by "
        f"{_label('trust anchor', index, count)} {_describe(anchors.certs[index])} in {objects.bundle}",
    )


# Helm values


def _anchors_match_values(anchors: _Parsed, values_pem: str | None, objects: _Objects) -> CheckResult:
    hint = (
        f"Pass the cluster's current anchors as identityTrustAnchorsPEM (`{objects.show_bundle}`), "
        "or, to change them, follow Linkerd's trust-anchor rotation procedure (bundle old and new anchors first)."
    )
    if values_pem is None:
        return passed(ANCHORS_MATCH_VALUES, CATEGORY, "no trust anchors in the values to compare")
    if anchors.error is not None:
        return _cannot_check(ANCHORS_MATCH_VALUES, f"the trust anchors in {objects.bundle}", ANCHORS_PARSE, hint)
    values = _parse(values_pem)
    if values.error is not None:
        return failed(
            ANCHORS_MATCH_VALUES,
            CATEGORY,
            f"identityTrustAnchorsPEM in the Helm values {values.error}; expected the anchors in {objects.bundle}",
            hint,
        )
    cluster_der = {_der(cert): cert for cert in anchors.certs}
    values_der = {_der(cert): cert for cert in values.certs}
    extra = [_describe(cert) for der, cert in values_der.items() if der not in cluster_der]
    missing = [_describe(cert) for der, cert in cluster_der.items() if der not in values_der]
    if extra or missing:
        found = []
        if extra:
            found.append(f"the values carry {len(extra)} anchor(s) the cluster does not trust: " + ", ".join(extra))
        if missing:
            found.append(f"the values omit {len(missing)} anchor(s) the cluster trusts: " + ", ".join(missing))
        return failed(
            ANCHORS_MATCH_VALUES,
            CATEGORY,
            f"identityTrustAnchorsPEM in the Helm values differs from {objects.bundle} (mismatched trust: "
            "meshed workloads would stop trusting each other): " + "; ".join(found),
            hint,
        )
    count = len(cluster_der)
    return passed(
        ANCHORS_MATCH_VALUES,
        CATEGORY,
        f"identityTrustAnchorsPEM in the Helm values holds the same {count} anchor"
        + ("s" if count != 1 else "")
        + f" as {objects.bundle}",
    )


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)
