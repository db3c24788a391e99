"""LabelSelector semantics and which webhooks intercept pod creation, as the API server judges them."""

from __future__ import annotations

import pytest

from upgrader.ports import LabelSelector, SelectorRequirement, WebhookEntry, WebhookRule
from upgrader.preflight.selectors import (
    blocks_pods_in,
    describe_selector,
    intercepts_pod_creation,
    namespace_labels,
    selector_matches,
)

EXEMPT = "config.linkerd.io/admission-webhooks"
NAME = "kubernetes.io/metadata.name"
KUBE_SYSTEM = namespace_labels("kube-system", {})


def _req(key: str, op: str, *values: str) -> SelectorRequirement:
    return SelectorRequirement(key, op, values)


def _sel(*reqs: SelectorRequirement, **labels: str) -> LabelSelector:
    return LabelSelector(dict(labels), reqs)


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        pytest.param(None, {}, True, id="no selector selects everything"),
        pytest.param(_sel(), {"a": "b"}, True, id="an empty selector selects everything"),
        pytest.param(LabelSelector({"team": "a"}), {"team": "a", "x": "y"}, True, id="matchLabels present and equal"),
        pytest.param(LabelSelector({"team": "a"}), {"team": "b"}, False, id="matchLabels with another value"),
        pytest.param(LabelSelector({"team": "a"}), {}, False, id="matchLabels on a missing label"),
        pytest.param(_sel(_req("env", "In", "prod", "stage")), {"env": "stage"}, True, id="In with a listed value"),
        pytest.param(_sel(_req("env", "In", "prod")), {"env": "dev"}, False, id="In with an unlisted value"),
        pytest.param(_sel(_req("env", "In", "prod")), {}, False, id="In on a missing label"),
        pytest.param(_sel(_req(EXEMPT, "NotIn", "disabled")), {}, True, id="NotIn on a missing label matches"),
        pytest.param(_sel(_req(EXEMPT, "NotIn", "disabled")), {EXEMPT: "disabled"}, False, id="NotIn a listed value"),
        pytest.param(_sel(_req(EXEMPT, "NotIn", "disabled")), {EXEMPT: "enabled"}, True, id="NotIn another value"),
        pytest.param(_sel(_req("x", "Exists")), {"x": ""}, True, id="Exists with an empty value"),
        pytest.param(_sel(_req("x", "Exists")), {}, False, id="Exists on a missing label"),
        pytest.param(_sel(_req("x", "DoesNotExist")), {}, True, id="DoesNotExist on a missing label"),
        pytest.param(_sel(_req("x", "DoesNotExist")), {"x": "1"}, False, id="DoesNotExist on a present label"),
        pytest.param(_sel(_req(NAME, "Gt", "1")), KUBE_SYSTEM, True, id="an unknown operator matches (fails closed)"),
        pytest.param(
            _sel(_req(EXEMPT, "NotIn", "disabled"), _req(NAME, "NotIn", "kube-system", "cert-manager")),
            KUBE_SYSTEM,
            False,
            id="the 2.12+ injector selector skips kube-system by name",
        ),
        pytest.param(
            _sel(_req(EXEMPT, "NotIn", "disabled"), _req(NAME, "NotIn", "kube-system", "cert-manager")),
            namespace_labels("shop", {}),
            True,
            id="the 2.12+ injector selector takes other namespaces",
        ),
        pytest.param(
            _sel(_req(EXEMPT, "NotIn", "disabled")), KUBE_SYSTEM, True, id="the 2.11 selector takes kube-system"
        ),
        pytest.param(
            _sel(_req(EXEMPT, "NotIn", "disabled"), team="a"),
            {"team": "a", EXEMPT: "disabled"},
            False,
            id="matchLabels and expressions must all hold",
        ),
    ],
)
def test_selector_matches(selector: LabelSelector | None, labels: dict[str, str], matches: bool) -> None:
    """A LabelSelector selects labels when every matchLabels entry and every expression holds."""
    assert selector_matches(selector, labels) is matches


def test_the_name_label_is_added_but_a_live_one_wins() -> None:
    """Selectors see kubernetes.io/metadata.name even where a record lacks it; a live value is kept."""
    assert namespace_labels("kube-system", {"a": "b"}) == {NAME: "kube-system", "a": "b"}
    assert namespace_labels("kube-system", {NAME: "kube-system"}) == {NAME: "kube-system"}


@pytest.mark.parametrize(
    ("rule", "intercepts"),
    [
        pytest.param(WebhookRule(("CREATE",), ("",), ("pods", "services")), True, id="CREATE pods in the core group"),
        pytest.param(WebhookRule(("*",), ("*",), ("*",)), True, id="wildcards cover pods"),
        pytest.param(WebhookRule(("CREATE",), ("",), ("*/*",)), True, id="every resource and subresource"),
        pytest.param(WebhookRule(("UPDATE",), ("",), ("pods",)), False, id="UPDATE only does not cover creation"),
        pytest.param(WebhookRule(("CREATE",), ("",), ("pods/exec",)), False, id="a subresource is not the pod"),
        pytest.param(
            WebhookRule(("CREATE", "UPDATE"), ("policy.linkerd.io",), ("servers",)), False, id="custom resources"
        ),
        pytest.param(WebhookRule(("CREATE",), ("apps",), ("pods",)), False, id="pods of another group"),
    ],
)
def test_intercepts_pod_creation(rule: WebhookRule, intercepts: bool) -> None:
    """Only a rule covering CREATE of core pods makes a webhook intercept pod creation."""
    assert intercepts_pod_creation(WebhookEntry("w", rules=(rule,))) is intercepts


def test_blocks_pods_in_needs_fail_pods_and_the_namespace_selector() -> None:
    """Fail + pod rule + namespaceSelector match; an objectSelector only narrows which pods, never exempts."""
    entry = WebhookEntry(
        "w", "Fail", _sel(_req(EXEMPT, "NotIn", "disabled")), None, (WebhookRule(("CREATE",), ("",), ("pods",)),)
    )
    assert blocks_pods_in(entry, "kube-system", {})
    assert not blocks_pods_in(entry, "kube-system", {EXEMPT: "disabled"})
    assert not blocks_pods_in(
        WebhookEntry("w", "Ignore", entry.namespace_selector, None, entry.rules), "kube-system", {}
    )
    assert blocks_pods_in(
        WebhookEntry("w", "Fail", None, LabelSelector({"linkerd.io/inject": "enabled"}), entry.rules), "kube-system", {}
    ), "kube-system pods may carry the label the objectSelector requires"
    assert blocks_pods_in(
        WebhookEntry("w", "Fail", _sel(_req(NAME, "Foo", "kube-system")), None, entry.rules),
        "kube-system",
        {},
    ), "an operator upgrader does not know may let kube-system through"


def test_describe_selector() -> None:
    """Selectors read as one line in messages."""
    assert describe_selector(None) == "{} (none set)"
    assert describe_selector(_sel(_req(EXEMPT, "NotIn", "disabled"), _req("x", "Exists"), a="b")) == (
        f"{{a=b, {EXEMPT} NotIn [disabled], x Exists}}"
    )
