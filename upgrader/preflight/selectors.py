"""Which admission webhooks would intercept pod creation in a namespace (pure).

Kubernetes sends a request to a webhook when one of its rules covers the request and both
selectors match: the ``namespaceSelector`` against the namespace's labels (which always
carry ``kubernetes.io/metadata.name``, set by the API server), the ``objectSelector``
against the object's labels. A missing selector selects everything, as does an empty one.
Judged to keep kube-system safe, they fail closed: an unknown operator matches, and an
objectSelector never exempts a namespace (its pods may carry the labels it selects).
"""

from __future__ import annotations

from collections.abc import Mapping

from upgrader.ports import LabelSelector, SelectorRequirement, WebhookEntry, WebhookRule

NAME_LABEL = "kubernetes.io/metadata.name"


def namespace_labels(name: str, labels: Mapping[str, str]) -> dict[str, str]:
    """A namespace's labels as selectors see them: the API server's name label added if absent."""
    return {NAME_LABEL: name, **labels}


OPERATORS = frozenset({"In", "NotIn", "Exists", "DoesNotExist"})  # what a LabelSelector may use


def requirement_matches(req: SelectorRequirement, labels: Mapping[str, str]) -> bool:
    """One matchExpressions entry against ``labels``.

    An operator we do not know counts as matching: these selectors judge whether a webhook may
    intercept a namespace, and a judgement we cannot make must not read as "it cannot".
    """
    present = req.key in labels
    if req.operator == "In":
        return present and labels[req.key] in req.values
    if req.operator == "NotIn":
        return not present or labels[req.key] not in req.values
    if req.operator == "Exists":
        return present
    if req.operator == "DoesNotExist":
        return not present
    return True


def selector_matches(selector: LabelSelector | None, labels: Mapping[str, str]) -> bool:
    """Whether ``selector`` selects an object with ``labels`` (all matchLabels and expressions hold)."""
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in selector.match_labels.items()):
        return False
    return all(requirement_matches(r, labels) for r in selector.match_expressions)


def describe_selector(selector: LabelSelector | None) -> str:
    """A selector in one line, e.g. ``{a=b, c NotIn [d, e]}``; ``{}`` selects everything."""
    if selector is None:
        return "{} (none set)"
    parts = [f"{k}={v}" for k, v in sorted(selector.match_labels.items())]
    for r in selector.match_expressions:
        parts.append(f"{r.key} {r.operator}" + (f" [{', '.join(r.values)}]" if r.values else ""))
    return "{" + ", ".join(parts) + "}"


def _covers(rule: WebhookRule, *, group: str, resource: str, operation: str) -> bool:
    return (
        any(g in (group, "*") for g in rule.api_groups)
        and any(r in (resource, "*", "*/*") for r in rule.resources)
        and any(o in (operation, "*") for o in rule.operations)
    )


def intercepts_pod_creation(entry: WebhookEntry) -> bool:
    """Whether one of the webhook's rules covers CREATE of core/v1 pods."""
    return any(_covers(r, group="", resource="pods", operation="CREATE") for r in entry.rules)


def unknown_operators(selector: LabelSelector | None) -> list[str]:
    """The operators of ``selector`` we do not know (they count as matching)."""
    return sorted({r.operator for r in selector.match_expressions if r.operator not in OPERATORS}) if selector else []


def blocks_pods_in(entry: WebhookEntry, namespace: str, labels: Mapping[str, str]) -> bool:
    """Whether pods created in ``namespace`` may go through ``entry`` and fail when it is down.

    True for a webhook with failurePolicy Fail whose rules cover pod creation and whose
    namespaceSelector matches the namespace. The objectSelector is not consulted: it only narrows
    which pods, and the namespace's pods may carry whatever labels it selects (kube-system's pods
    are not ours to know), so only the namespaceSelector can exempt a namespace.
    """
    return (
        entry.failure_policy == "Fail"
        and intercepts_pod_creation(entry)
        and selector_matches(entry.namespace_selector, namespace_labels(namespace, labels))
    )
