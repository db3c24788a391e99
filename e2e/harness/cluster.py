"""A real Kubernetes control plane on loopback, with KWOK faking nodes and pods.

``LocalCluster`` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
kwok (all built by ``e2e.harness.binaries``) on free 127.0.0.1 ports with freshly generated
certificates, creates N fake nodes, waits until the API is ready, the nodes are Ready and
the controllers work, and writes an admin kubeconfig. ``stop()`` terminates every process
group it started and removes its folder. Each component logs to ``<dir>/logs/<name>.log``.
The API server writes an audit log to ``<dir>/audit`` (``e2e.harness.audit``); kwok plays pods
with the stages of ``e2e.harness.stages`` (Ready and gone at once unless ``pod_timing`` or a pod's
annotations ask for delays).

Command line (used by ``make cluster-up`` / ``make cluster-down``)::

    python -m e2e.harness.cluster up   [--dir DIR] [--nodes N]   # prints the kubeconfig path
    python -m e2e.harness.cluster down [--dir DIR]
    python -m e2e.harness.cluster status [--dir DIR]

A cluster started with ``up`` outlives the command; its process ids are kept in
``<dir>/state.json`` so that ``down`` (or ``LocalCluster.attach``) can stop it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import socket
import ssl
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from e2e.harness import audit, binaries, certs
from e2e.harness.processes import ProcessError, Processes, alive
from e2e.harness.stages import PodTiming, stages_yaml

DEFAULT_DIR = Path(tempfile.gettempdir()) / "upgrader-e2e-cluster"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.0.0.1/20"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def default_dir() -> Path:
    """The long-lived cluster's folder: ``$UPGRADER_E2E_CLUSTER_DIR`` or ``DEFAULT_DIR``.

    Every harness entry point (cluster, world, demo, bench) resolves its folder here, so a
    world started beside a second cluster lands on that cluster.
    """
    env = os.environ.get("UPGRADER_E2E_CLUSTER_DIR")
    return Path(env).expanduser() if env else DEFAULT_DIR


class ClusterError(RuntimeError):
    """The cluster did not come up; the message names the component and its log."""


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on, chosen below the ephemeral range.

    Ports the kernel hands out for outgoing connections (the API server's to etcd, say)
    come from the ephemeral range; a listener port picked there can be taken by such a
    connection before the component binds it.
    """
    high = _ephemeral_low() - 1
    for _ in range(200):
        port = random.randint(20000, max(20001, high))  # noqa: S311 - not security related
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise ClusterError("no free TCP port on 127.0.0.1 below the ephemeral range")


def _wait(what: str, check: Callable[[], bool], timeout: float, on_timeout: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except ProcessError:
            raise
        except Exception:  # noqa: S110 - anything short of success means "not yet"
            pass
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}\n{on_timeout()}")
        time.sleep(0.25)


@dataclass
class LocalCluster:
    """One local control plane. Use as a context manager, or ``start()``/``stop()``."""

    nodes: int = 3
    dir: Path | None = None
    # How long pods take to become Ready and to go (e2e.harness.stages); pods may override it by annotation.
    pod_timing: PodTiming = field(default_factory=PodTiming)
    pods_per_node: int = 110  # the fake nodes' pod capacity (a scale benchmark needs more)
    api_qps: int | None = None  # the controllers' client rate (their default, 20/s, makes 10,000 pods slow)
    detach: bool = False  # processes survive this Python process (for `cluster up`)
    ports: dict[str, int] = field(default_factory=dict)
    _owns_dir: bool = False
    _processes: Processes | None = None

    # ---- paths -------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        assert self.dir is not None, "cluster not started"
        return self.dir

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def log_dir(self) -> Path:
        return self.root / "logs"

    @property
    def audit_dir(self) -> Path:
        """The API server's audit log (read it with ``e2e.harness.audit.read``)."""
        return self.root / "audit"

    @property
    def processes(self) -> Processes:
        if self._processes is None:
            self._processes = Processes(self.log_dir, detach=self.detach)
        return self._processes

    @property
    def pids(self) -> dict[str, int]:
        return self.processes.pids

    def log(self, component: str) -> Path:
        return self.processes.log(component)

    def log_tails(self, lines: int = 40) -> str:
        """The last ``lines`` of every component's log, for failure reports."""
        return self.processes.log_tails(lines)

    def spawn(self, name: str, cmd: list[str], *, env: dict[str, str] | None = None) -> int:
        """Start another program that lives and dies with this cluster (e.g. a chart repo)."""
        pid = self.processes.spawn(name, cmd, cwd=self.root, env=env)
        if (self.root / "state.json").exists():
            self._write_state()
        return pid

    # ---- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 180.0) -> None:
        """Build or reuse the binaries, start every component and wait until usable."""
        binaries.ensure_all(["etcd", "kubernetes", "kwok"], echo=lambda m: print(m, file=sys.stderr))
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="upgrader-e2e-"))
            self._owns_dir = True
        else:
            if (self.dir / "state.json").exists():
                raise ClusterError(f"a cluster already runs in {self.dir}: stop it first (cluster down)")
            self.dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        for attempt in range(3):
            try:
                self._start(timeout)
                return
            except ProcessError as exc:
                # A port taken between choosing and binding it: start again on fresh ports.
                if "address already in use" not in str(exc) or attempt == 2:
                    self.stop()
                    raise
                self._processes.stop() if self._processes else None
                self._processes = None
                shutil.rmtree(self.root / "etcd", ignore_errors=True)
                for log in self.log_dir.glob("*.log"):
                    log.unlink()
            except BaseException:
                # The error carries the components' log tails; nothing is left running or on disk.
                self.stop()
                raise

    def _start(self, timeout: float) -> None:
        pki = self.root / "pki"
        pki.mkdir(exist_ok=True)
        ca = certs.new_ca("upgrader-e2e-ca")
        ca_crt, ca_key = ca.write(pki, "ca")
        serving = certs.issue(
            ca,
            "kube-apiserver",
            dns=(
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
            ips=("127.0.0.1", "10.96.0.1"),
        )
        srv_crt, srv_key = serving.write(pki, "apiserver")
        front_crt, front_key = certs.issue(ca, "front-proxy-client").write(pki, "front-proxy-client")
        admin = certs.issue(ca, "upgrader-e2e-admin", org="system:masters")
        admin_crt, admin_key = admin.write(pki, "admin")
        sa_private, sa_public = certs.new_signing_key()
        (pki / "sa.key").touch(mode=0o600)
        (pki / "sa.key").write_bytes(sa_private)
        (pki / "sa.pub").write_bytes(sa_public)

        self.ports = {
            name: free_port()
            for name in ("etcd-client", "etcd-peer", "apiserver", "controller-manager", "scheduler", "kwok")
        }
        p = self.ports
        etcd_url = f"http://127.0.0.1:{p['etcd-client']}"
        self._write_kubeconfig(ca.cert_pem, admin.cert_pem, admin.key_pem)
        bins = {
            b: str(binaries.program(b))
            for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
        }
        self.processes.spawn(
            "etcd",
            [
                bins["etcd"],
                "--name=e2e",
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
                f"--initial-cluster=e2e=http://127.0.0.1:{p['etcd-peer']}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        _wait(
            "etcd health",
            lambda: (
                b'"health":"true"'
                in urllib.request.urlopen(  # noqa: S310 - loopback
                    f"{etcd_url}/health", timeout=2
                ).read()
            ),
            60,
            self.log_tails,
        )

        self.processes.spawn(
            "kube-apiserver",
            [
                bins["kube-apiserver"],
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={p['apiserver']}",
                f"--tls-cert-file={srv_crt}",
                f"--tls-private-key-file={srv_key}",
                f"--client-ca-file={ca_crt}",
                "--authorization-mode=Node,RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                # Endpoints may not hold loopback addresses; nothing routes to the service anyway.
                "--endpoint-reconciler-type=none",
                # The front-proxy CA lets controllers read a complete extension-apiserver-authentication.
                f"--requestheader-client-ca-file={ca_crt}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={front_crt}",
                f"--proxy-client-key-file={front_key}",
                f"--cert-dir={pki}",
                "--profiling=false",
                *audit.apiserver_flags(self.audit_dir),
            ],
        )
        ctx = ssl.create_default_context(cafile=str(ca_crt))
        ctx.load_cert_chain(str(admin_crt), str(admin_key))
        api = f"https://127.0.0.1:{p['apiserver']}"
        _wait(
            "kube-apiserver /readyz",
            lambda: (
                urllib.request.urlopen(  # noqa: S310 - loopback
                    f"{api}/readyz", context=ctx, timeout=5
                ).status
                == 200
            ),
            timeout,
            self.log_tails,
        )

        kc = str(self.kubeconfig)
        self.processes.spawn(
            "kube-controller-manager",
            [
                bins["kube-controller-manager"],
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--leader-elect=false",
                *([f"--kube-api-qps={self.api_qps}", f"--kube-api-burst={2 * self.api_qps}"] if self.api_qps else []),
                "--controllers=*",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={ca_crt}",
                "--use-service-account-credentials=false",
                f"--cluster-signing-cert-file={ca_crt}",
                f"--cluster-signing-key-file={ca_key}",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['controller-manager']}",
                f"--cert-dir={pki}",
                "--profiling=false",
            ],
        )
        self.processes.spawn(
            "kube-scheduler",
            [
                bins["kube-scheduler"],
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={p['scheduler']}",
                f"--cert-dir={pki}",
                "--profiling=false",
            ],
        )
        stages = self.root / "kwok-stages.yaml"
        stages.write_text(stages_yaml(self.pod_timing))
        self.processes.spawn(
            "kwok",
            [
                bins["kwok"],
                f"--config={stages}",
                f"--kubeconfig={kc}",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                # 0 makes v0.7.0 heartbeat too slowly and nodes flip to NotReady.
                "--node-lease-duration-seconds=40",
                f"--cidr={POD_CIDR}",
                "--node-ip=127.0.0.1",
                f"--server-address=127.0.0.1:{p['kwok']}",
            ],
        )
        self._write_state()
        self._create_nodes_and_wait(timeout)

    def _write_kubeconfig(self, ca_pem: bytes, crt_pem: bytes, key_pem: bytes) -> None:
        import base64  # noqa: PLC0415

        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode()

        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "upgrader-e2e",
            "clusters": [
                {
                    "name": "upgrader-e2e",
                    "cluster": {
                        "server": f"https://127.0.0.1:{self.ports['apiserver']}",
                        "certificate-authority-data": b64(ca_pem),
                    },
                }
            ],
            "users": [
                {
                    "name": "upgrader-e2e-admin",
                    "user": {"client-certificate-data": b64(crt_pem), "client-key-data": b64(key_pem)},
                }
            ],
            "contexts": [
                {"name": "upgrader-e2e", "context": {"cluster": "upgrader-e2e", "user": "upgrader-e2e-admin"}}
            ],
        }
        self.kubeconfig.touch(mode=0o600)
        self.kubeconfig.write_text(yaml.safe_dump(doc))

    def _create_nodes_and_wait(self, timeout: float) -> None:
        from kubernetes import client, config  # noqa: PLC0415 - the harness may use the client freely

        api = config.new_client_from_config(config_file=str(self.kubeconfig))
        core = client.CoreV1Api(api)
        for i in range(self.nodes):
            name = f"kwok-node-{i}"
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "kubernetes.io/role": "agent",
                        "type": "kwok",
                        "topology.kubernetes.io/zone": f"zone-{i % 3}",
                    },
                },
                "status": {
                    "allocatable": {"cpu": "32", "memory": "256Gi", "pods": str(self.pods_per_node)},
                    "capacity": {"cpu": "32", "memory": "256Gi", "pods": str(self.pods_per_node)},
                },
            }
            core.create_node(body)

        def nodes_ready() -> bool:
            self.processes.check_running()
            items = core.list_node().items
            ready = [
                n for n in items if any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or []))
            ]
            return len(ready) == self.nodes

        def controllers_work() -> bool:
            self.processes.check_running()
            core.read_namespaced_service_account("default", "default")
            return True

        _wait(f"{self.nodes} Ready nodes", nodes_ready, timeout, self.log_tails)
        _wait(
            "the default ServiceAccount (controller-manager working)",
            controllers_work,
            timeout,
            self.log_tails,
        )
        api.close()

    def _write_state(self) -> None:
        state = {
            "pids": self.pids,
            "ports": self.ports,
            "kubeconfig": str(self.kubeconfig),
            "nodes": self.nodes,
            "owns_dir": self._owns_dir,
        }
        (self.root / "state.json").write_text(json.dumps(state, indent=2))

    @classmethod
    def attach(cls, folder: Path) -> LocalCluster:
        """The cluster recorded in ``folder/state.json`` (started by `cluster up`)."""
        state = json.loads((folder / "state.json").read_text())
        cluster = cls(nodes=state["nodes"], dir=folder, detach=True, ports=state["ports"], _owns_dir=True)
        cluster.processes.pids.update(state["pids"])
        return cluster

    def peak_rss_kib(self) -> int:
        return self.processes.peak_rss_kib()

    def stop_component(self, component: str) -> None:
        """Stop one component (etcd, kube-apiserver, ...) until ``start_component``: its port refuses connections."""
        if component not in COMPONENTS:
            raise ClusterError(f"unknown component {component!r}; one of {', '.join(COMPONENTS)}")
        self.processes.kill(component)

    def start_component(self, component: str, timeout: float = 120.0) -> None:
        """Start a stopped component again on the same port with the same flags; wait until it answers
        (etcd: its /health; any other: the API server's /readyz)."""
        self.processes.respawn(component)
        if self._owns_dir and (self.root / "state.json").exists():
            self._write_state()
        if component == "etcd":
            health = f"http://127.0.0.1:{self.ports['etcd-client']}/health"
            _wait(
                "etcd health after its restart",
                lambda: b'"health":"true"' in urllib.request.urlopen(health, timeout=2).read(),
                timeout,
                self.log_tails,
            )
            return
        pki = self.root / "pki"
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        api = f"https://127.0.0.1:{self.ports['apiserver']}"
        _wait(
            f"kube-apiserver /readyz after restarting {component}",
            lambda: urllib.request.urlopen(f"{api}/readyz", context=ctx, timeout=5).status == 200,  # noqa: S310
            timeout,
            self.log_tails,
        )

    def stop(self, *, remove_dir: bool = True, grace: float = 10.0) -> None:
        """Stop every component (SIGTERM, then SIGKILL after ``grace``) and remove the folder."""
        if self._processes is not None:
            self._processes.stop(grace=grace)
        if self.dir is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.dir / "state.json").unlink()
            if remove_dir and self._owns_dir:
                shutil.rmtree(self.dir, ignore_errors=True)


def _cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m e2e.harness.cluster")
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", type=Path, default=default_dir())
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args(argv)
    folder: Path = args.dir
    if args.action == "up":
        started = time.monotonic()
        cluster = LocalCluster(nodes=args.nodes, dir=folder, detach=True)
        cluster._owns_dir = True
        try:
            cluster.start()
        except (ClusterError, ProcessError, binaries.BuildError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(
            f"cluster up in {time.monotonic() - started:.1f}s with {args.nodes} nodes; logs in {cluster.log_dir}",
            file=sys.stderr,
        )
        print(f"export KUBECONFIG={cluster.kubeconfig}", file=sys.stderr)
        print(cluster.kubeconfig)
        return 0
    if not (folder / "state.json").exists():
        print(f"no cluster recorded in {folder}", file=sys.stderr)
        return 0 if args.action == "down" else 1
    cluster = LocalCluster.attach(folder)
    if args.action == "status":
        alive_now = {n: alive(p) for n, p in cluster.pids.items()}
        print(
            json.dumps(
                {
                    "kubeconfig": str(cluster.kubeconfig),
                    "alive": alive_now,
                    "peak_rss_mib": round(cluster.peak_rss_kib() / 1024),
                },
                indent=2,
            )
        )
        return 0 if all(alive_now.values()) else 1
    cluster.stop()
    print(f"cluster in {folder} stopped and removed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
