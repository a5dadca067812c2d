"""Real node figures: `cluster up` to a Ready real node, pod apply to Running (image present),
and how long a ConfigMap change takes to reach a pod's mounted volume (the path a
ModelService traffic-weight change takes to its server pods).

Runs its own cluster in `$COXSWAIN_CLUSTER_DIR-bench-real` and stops it at the end. Needs root.
Prints `figure` lines (seconds) and `ratio` lines against baselines from the same run: the
control plane's own start time, and the canary analysis interval's lower bound.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightkube.codecs import from_dict
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Namespace, Pod, ServiceAccount

from coxswain.devcluster import DevCluster, default_cluster_dir
from coxswain.devcluster.bootstrap import make_client
from coxswain.devcluster.realnode import REAL_NODE_LABEL
from coxswain.devcluster.realnode_config import KUBELET_SYNC_FREQUENCY
from coxswain.devcluster.realnode_images import BUSYBOX_IMAGE

CANARY_MIN_INTERVAL = 5.0  # ModelService canary analysis intervalSeconds lower bound (api/modelservice.py)
REFRESH_ROUNDS = 5


def wait(probe: Any, timeout: float, what: str) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if probe():
            return time.monotonic() - began
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def main() -> None:
    base = default_cluster_dir()
    dev = DevCluster(base.with_name(base.name + "-bench-real"))
    dev.down()
    try:
        began = time.monotonic()
        dev.up(gpu_nodes=0, cpu_nodes=0, real_nodes=0, timeout=600)
        control_plane = time.monotonic() - began
        dev.down()
        began = time.monotonic()
        dev.up(gpu_nodes=0, cpu_nodes=0, real_nodes=1, timeout=600)
        with_node = time.monotonic() - began
        print(f"figure control_plane_up_s {control_plane:.1f}")
        print(f"figure up_to_real_node_ready_s {with_node:.1f}")
        print(f"ratio up_with_real_node_vs_control_plane_only {with_node / control_plane:.2f}")

        client = make_client(dev.paths.kubeconfig)
        client.create(Namespace(metadata=ObjectMeta(name="bench")))
        wait(lambda: _exists(client, "bench"), 60, "namespace bench's default ServiceAccount")
        client.create(ConfigMap(metadata=ObjectMeta(name="weights", namespace="bench"), data={"weight": "0"}))
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "reader", "namespace": "bench"},
            "spec": {
                "nodeSelector": {REAL_NODE_LABEL: "true"},
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "main",
                        "image": BUSYBOX_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["sleep", "3600"],
                        "volumeMounts": [{"name": "weights", "mountPath": "/weights"}],
                    }
                ],
                "volumes": [{"name": "weights", "configMap": {"name": "weights"}}],
            },
        }
        began = time.monotonic()
        client.create(from_dict(pod))
        running = wait(lambda: _phase(client) == "Running", 300, "pod Running")
        print(f"figure pod_apply_to_running_s {running:.2f}")
        uid = client.get(Pod, "reader", namespace="bench").metadata.uid  # type: ignore[union-attr]
        files = list(
            (dev.paths.root / "nodes").glob(
                f"n*/kubelet/pods/{uid}/volumes/kubernetes.io~configmap/weights/weight"
            )
        )
        volume_file = files[0]
        delays = []
        for value in range(1, REFRESH_ROUNDS + 1):
            client.patch(ConfigMap, "weights", {"data": {"weight": str(value)}}, namespace="bench")
            delays.append(wait(lambda v=value: _read(volume_file) == str(v), 300, "the volume to refresh"))
        worst, mean = max(delays), sum(delays) / len(delays)
        sync = float(KUBELET_SYNC_FREQUENCY.rstrip("s"))
        print(f"figure configmap_refresh_mean_s {mean:.2f}")
        print(f"figure configmap_refresh_max_s {worst:.2f}")
        print(f"ratio configmap_refresh_max_vs_canary_min_interval {worst / CANARY_MIN_INTERVAL:.2f}")
        print(f"ratio configmap_refresh_max_vs_kubelet_sync_frequency {worst / sync:.2f}")
    finally:
        dev.down()


def _exists(client: Any, ns: str) -> bool:
    try:
        client.get(ServiceAccount, "default", namespace=ns)
        return True
    except Exception:
        return False


def _phase(client: Any) -> str:
    status = client.get(Pod, "reader", namespace="bench").status
    return str(status.phase) if status else ""


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


if __name__ == "__main__":
    main()
