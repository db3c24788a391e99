"""upgrader: upgrade and roll back the Linkerd service mesh on Kubernetes, safely and unattended."""

__version__ = "0.1.0"
