"""The local API server's audit log: every request, attributed to its client by user agent.

``LocalCluster`` starts kube-apiserver with ``POLICY`` (Metadata level: who, what, when, never a
body), the JSON log format and the blocking log mode, so a request's event is on disk before its
answer is sent and a count taken after a client has exited is exact. The RequestReceived stage
is not logged; a watch or a long request logs ResponseStarted and ResponseComplete, so requests are
counted once each by audit ID. Node heartbeats (Leases in kube-node-lease) and health probes are
not logged: they are most of a quiet cluster's traffic and no client we measure sends them.

Every harness component authenticates as the same admin user, so the user agent is what tells
clients apart: ``upgrader/<version>``, ``Helm/<version>`` (upgrader's helm children),
``kubectl/<version>``, ``kwok/...``, ``kube-controller-manager/...`` and the Python client's
default for the harness itself.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml

POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}],
         "namespaces": ["kube-node-lease"]},
        {"level": "None", "nonResourceURLs": ["/healthz*", "/readyz*", "/livez*"]},
        {"level": "Metadata"},
    ],
}  # fmt: skip


def policy_yaml() -> str:
    return yaml.safe_dump(POLICY, sort_keys=False)


def apiserver_flags(folder: Path) -> list[str]:
    """kube-apiserver flags that write the audit log under ``folder`` (created here)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "policy.yaml").write_text(policy_yaml())
    return [
        f"--audit-policy-file={folder / 'policy.yaml'}",
        f"--audit-log-path={folder / 'audit.log'}",
        "--audit-log-format=json",
        "--audit-log-mode=blocking",  # written before the answer: a count read afterwards is exact
        "--audit-log-maxsize=2048",  # MB before rotation (0 would mean the library's 100); read() reads backups too
        "--audit-log-maxbackup=2",
    ]


@dataclass(frozen=True)
class Request:
    """One API request as the audit log saw it."""

    audit_id: str
    at: dt.datetime
    agent: str  # the user agent as sent
    verb: str  # get, list, watch, create, update, patch, delete, ...
    resource: str  # "pods", "deployments", "leases", ... or the path of a non-resource request
    namespace: str
    subresource: str
    code: int

    @property
    def client(self) -> str:
        """The client family: the user agent's product name (``upgrader``, ``Helm``, ``kubectl``, ...)."""
        return self.agent.split("/", 1)[0] if self.agent else "(none)"

    @property
    def kind(self) -> str:
        """``verb resource`` (``list pods``, ``patch deployments``, ``get /version``)."""
        sub = f"/{self.subresource}" if self.subresource else ""
        return f"{self.verb} {self.resource}{sub}"


def _files(folder: Path) -> list[Path]:
    return sorted(folder.glob("audit*.log"), key=lambda p: (p.name == "audit.log", p.name))


def read(folder: Path, since: dt.datetime | None = None, until: dt.datetime | None = None) -> list[Request]:
    """Every request logged under ``folder`` received in [``since``, ``until``], once each, oldest first."""
    seen: dict[str, Request] = {}
    for path in _files(folder):
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if not line.startswith("{"):
                    continue
                event = json.loads(line)
                audit_id = event["auditID"]
                if audit_id in seen:
                    continue
                at = dt.datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
                if (since is not None and at < since) or (until is not None and at > until):
                    continue
                ref = event.get("objectRef") or {}
                seen[audit_id] = Request(
                    audit_id=audit_id,
                    at=at,
                    agent=event.get("userAgent", ""),
                    verb=event.get("verb", ""),
                    resource=ref.get("resource") or event.get("requestURI", "").split("?")[0],
                    namespace=ref.get("namespace", ""),
                    subresource=ref.get("subresource", ""),
                    code=int((event.get("responseStatus") or {}).get("code", 0)),
                )
    return sorted(seen.values(), key=lambda r: r.at)


def by_client(requests: Iterable[Request]) -> Counter[str]:
    return Counter(r.client for r in requests)


def by_kind(requests: Iterable[Request], client: str) -> Counter[str]:
    """``verb resource`` counts of one client family's requests."""
    return Counter(r.kind for r in requests if r.client == client)


def namespaced_lists(requests: Iterable[Request], client: str) -> int:
    """LIST calls of one client scoped to a namespace (a cluster-wide informer makes none)."""
    return sum(1 for r in requests if r.client == client and r.verb == "list" and r.namespace)
