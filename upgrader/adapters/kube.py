"""KubePort over the official Kubernetes Python client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from upgrader.errors import ClusterUnreachableError, InputError
from upgrader.ports import Container, Pod


def _containers(items: list[Any] | None) -> tuple[Container, ...]:
    return tuple(
        Container(name=c.name, image=c.image or "", restart_policy=getattr(c, "restart_policy", None))
        for c in items or []
    )


class KubeAdapter:
    """Reads the cluster with one client bound to one kubeconfig/context."""

    def __init__(self, *, kubeconfig: Path | None = None, context: str | None = None) -> None:
        try:
            self._api = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig) if kubeconfig else None, context=context
            )
        except (config.ConfigException, OSError, yaml.YAMLError, ValueError, KeyError, TypeError) as exc:
            raise InputError(
                f"cannot load kubeconfig {kubeconfig or '(default)'}: {exc}",
                hint="pass --kubeconfig PATH (and --context NAME) of the cluster running Linkerd",
            ) from exc
        self._core = client.CoreV1Api(self._api)

    def _guard(self, what: str, exc: Exception) -> ClusterUnreachableError:
        return ClusterUnreachableError(
            f"the Kubernetes API did not answer while {what}: {exc}",
            hint="check that the cluster is up and that --kubeconfig/--context point at it",
        )

    def server_version(self) -> str:
        try:
            info = client.VersionApi(self._api).get_code(_request_timeout=10)
        except (urllib3.exceptions.HTTPError, ApiException, OSError) as exc:
            raise self._guard("reading its version", exc) from exc
        return str(info.git_version)

    def list_pods(self, *, label_selector: str = "") -> list[Pod]:
        try:
            items: list[Any] = self._core.list_pod_for_all_namespaces(
                label_selector=label_selector, _request_timeout=30
            ).items
        except (urllib3.exceptions.HTTPError, ApiException, OSError) as exc:
            raise self._guard("listing pods", exc) from exc
        pods = []
        for p in items:
            owner = (p.metadata.owner_references or [None])[0]
            pods.append(
                Pod(
                    namespace=p.metadata.namespace,
                    name=p.metadata.name,
                    uid=p.metadata.uid or "",
                    labels=dict(p.metadata.labels or {}),
                    annotations=dict(p.metadata.annotations or {}),
                    containers=_containers(p.spec.containers),
                    init_containers=_containers(p.spec.init_containers),
                    owner_kind=owner.kind if owner else "",
                    owner_name=owner.name if owner else "",
                    phase=(p.status.phase if p.status else "") or "",
                )
            )
        return pods

    def get_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            cm = self._core.read_namespaced_config_map(name, namespace, _request_timeout=10)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._guard(f"reading ConfigMap {namespace}/{name}", exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._guard(f"reading ConfigMap {namespace}/{name}", exc) from exc
        return dict(cm.data or {})
