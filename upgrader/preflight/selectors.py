"""Which admission webhooks would intercept pod creation in a namespace (pure).

Kubernetes sends a request to a webhook when one of its rules covers the request and both
selectors match: the ``namespaceSelector`` against the namespace's labels (which always
carry ``kubernetes.io/metadata.name``, set by the API server), the ``objectSelector``
against the object's labels. A missing selector selects everything, as does an empty one.
"""

from __future__ import annotations

from collections.abc import Mapping

from upgrader.ports import LabelSelector, SelectorRequirement, WebhookEntry, WebhookRule

NAME_LABEL = "kubernetes.io/metadata.name"


def namespace_labels(name: str, labels: Mapping[str, str]) -> dict[str, str]:
    """A namespace's labels as selectors see them: the API server's name label added if absent."""
    return {NAME_LABEL: name, **labels}


def requirement_matches(req: SelectorRequirement, labels: Mapping[str, str]) -> bool:
    """One matchExpressions entry against ``labels`` (an unknown operator matches nothing)."""
    present = req.key in labels
    if req.operator == "In":
        return present and labels[req.key] in req.values
    if req.operator == "NotIn":
        return not present or labels[req.key] not in req.values
    if req.operator == "Exists":
        return present
    if req.operator == "DoesNotExist":
        return not present
    return False


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


def blocks_pods_in(entry: WebhookEntry, namespace: str, labels: Mapping[str, str]) -> bool:
    """Whether pods created in ``namespace`` go through ``entry`` and fail when it is down.

    True for a webhook with failurePolicy Fail whose rules cover pod creation, whose
    namespaceSelector matches the namespace, and whose objectSelector matches a pod carrying
    no labels (ordinary pods: an objectSelector requiring a label only catches pods that have it).
    """
    return (
        entry.failure_policy == "Fail"
        and intercepts_pod_creation(entry)
        and selector_matches(entry.namespace_selector, namespace_labels(namespace, labels))
        and selector_matches(entry.object_selector, {})
    )
