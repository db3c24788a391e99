"""Values sent to helm: defaults plus preserved user values, migrated, identity unchanged, diff redacted."""

from __future__ import annotations

import json
from typing import Any

import pytest

from upgrader.catalog import ValuesChanges, default_catalog
from upgrader.values import ValuesError, diff, migrate, outgoing

KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcC\n-----END EC PRIVATE KEY-----"
USER: dict[str, Any] = {
    "identityTrustAnchorsPEM": "ANCHOR",
    "identity": {"issuer": {"tls": {"crtPEM": "CRT", "keyPEM": KEY}}},
    "proxyInit": {"resources": {"cpu": {"limit": "100m"}}},
    "controlPlaneTracing": True,
    "controllerReplicas": 3,
}
TARGET_DEFAULTS: dict[str, Any] = {
    "linkerdVersion": "edge-24.8.2",
    "controllerReplicas": 1,
    "controller": {"podDisruptionBudget": {"maxUnavailable": 1}},
    "identity": {"issuer": {"scheme": "linkerd.io/tls", "tls": {"crtPEM": "", "keyPEM": ""}}},
}
CAT = default_catalog()


def _changes(*majors: int) -> list[ValuesChanges]:
    return [m.values for m in CAT.majors if m.major in majors]


def test_reset_then_reuse_takes_new_defaults_and_keeps_user_values() -> None:
    """The target's new keys and linkerdVersion come from its defaults; user values and certificates survive."""
    out = outgoing(
        "reset-then-reuse", target_defaults=TARGET_DEFAULTS, user_values=USER, overrides={}, changes=_changes(16)
    )
    assert (out.reset_values, out.reuse_values) == (True, False)
    assert out.effective["linkerdVersion"] == "edge-24.8.2"
    assert out.effective["controller"]["podDisruptionBudget"]["maxUnavailable"] == 1
    assert out.effective["controllerReplicas"] == 3
    assert out.effective["identity"]["issuer"]["tls"] == {"crtPEM": "CRT", "keyPEM": KEY}
    assert out.effective["identity"]["issuer"]["scheme"] == "linkerd.io/tls"
    assert "resources" not in out.effective.get("proxyInit", {}), "removed in 2.16"
    assert out.migration.dropped == ["proxyInit.resources"]


def test_renamed_keys_move_to_their_new_place() -> None:
    """2.19 moves controlPlaneTracing to controller.tracing.enabled."""
    migrated = migrate(USER, _changes(19))
    assert migrated.values["controller"]["tracing"]["enabled"] is True
    assert "controlPlaneTracing" not in migrated.values
    assert ("controlPlaneTracing", "controller.tracing.enabled") in migrated.moved
    assert USER["controlPlaneTracing"] is True, "the input is not modified"


def test_reuse_sends_only_overrides_with_reuse_values() -> None:
    """reuse keeps helm's --reuse-values semantics: only the spec's overrides travel."""
    out = outgoing(
        "reuse", target_defaults=TARGET_DEFAULTS, user_values=USER, overrides={"proxy": {"logLevel": "x"}}, changes=[]
    )
    assert (out.values, out.reset_values, out.reuse_values) == ({"proxy": {"logLevel": "x"}}, False, True)


def test_reset_without_certificates_is_refused() -> None:
    """reset would drop the identity values: refused before anything is sent."""
    with pytest.raises(ValuesError, match="identityTrustAnchorsPEM"):
        outgoing("reset", target_defaults=TARGET_DEFAULTS, user_values=USER, overrides={}, changes=[])


def test_overrides_that_rotate_certificates_on_purpose_are_allowed() -> None:
    """Certificates set in the spec's overrides are a deliberate change, not a trap."""
    overrides = {
        "identityTrustAnchorsPEM": "NEW",
        "identity": {"issuer": {"tls": {"crtPEM": "NEWCRT", "keyPEM": "NEWKEY"}}},
    }
    out = outgoing("reset", target_defaults=TARGET_DEFAULTS, user_values=USER, overrides=overrides, changes=[])
    assert out.values["identityTrustAnchorsPEM"] == "NEW"


def test_diff_lists_changes_with_secrets_redacted() -> None:
    """The values diff names changed keys; the private key never appears, even when it changed."""
    new = json.loads(json.dumps(USER))
    new["controllerReplicas"] = 5
    new["identity"]["issuer"]["tls"]["keyPEM"] = KEY.replace("MHcC", "OTHER")
    rows = diff(USER, new)
    assert {"key": "controllerReplicas", "old": 3, "new": 5} in rows
    assert {"key": "identity.issuer.tls.keyPEM", "old": "<redacted>", "new": "<redacted> (changed)"} in rows
    assert "PRIVATE KEY" not in json.dumps(rows)


def test_chart_defaults_are_never_sent_as_user_values() -> None:
    """Only user values travel: helm would store sent defaults as user-supplied and the next hop would keep them."""
    out = outgoing(
        "reset-then-reuse", target_defaults=TARGET_DEFAULTS, user_values=USER, overrides={}, changes=_changes(16)
    )
    assert "linkerdVersion" not in out.values
    assert "controller" not in out.values
    assert out.values["controllerReplicas"] == 3


def test_a_pinned_linkerd_version_in_user_values_is_dropped_and_reported() -> None:
    """A linkerdVersion left in user values (e.g. by an earlier tool) would freeze the images: dropped."""
    out = outgoing(
        "reset-then-reuse",
        target_defaults=TARGET_DEFAULTS,
        user_values={**USER, "linkerdVersion": "stable-2.13.7"},
        overrides={},
        changes=[],
    )
    assert "linkerdVersion" not in out.values
    assert out.effective["linkerdVersion"] == "edge-24.8.2"
    assert "linkerdVersion" in out.migration.dropped
