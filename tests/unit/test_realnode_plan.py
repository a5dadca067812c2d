"""The real nodes' names and address plan, and their OCI image archive (pure functions)."""

from __future__ import annotations

import ipaddress
import json
import tarfile
from pathlib import Path

import pytest

from coxswain.devcluster.realnode_images import BUSYBOX_IMAGE, PAUSE_IMAGE, write_oci_archive
from coxswain.devcluster.realnode_plan import LINK_RANGE, POD_RANGE, RealNodesPlan, plan

pytestmark = pytest.mark.unit

# kwok pods, kwok nodes, Services, and the node agent's pods.
KWOK_RANGES = ("10.244.0.0/16", "10.1.0.0/16", "10.2.0.0/16", "10.0.0.0/24", "10.245.0.0/16")


def test_two_clusters_never_share_a_name() -> None:
    a, b = plan(Path("/c/one"), 7, 2), plan(Path("/c/two"), 7, 2)

    def names(p: RealNodesPlan) -> set[str]:
        return {p.bridge} | {x for n in p.nodes for x in (n.netns, n.host_veth, n.cgroup_root)}

    assert not names(a) & names(b)
    assert all(len(n) <= 15 for n in (a.bridge, *(n.host_veth for n in a.nodes)))


def test_addresses_stay_in_the_cluster_ranges_and_off_kwok_ones() -> None:
    p = plan(Path("/c/one"), 200, 4)
    pods = [ipaddress.IPv4Network(n.pod_cidr) for n in p.nodes]
    assert all(x.subnet_of(ipaddress.IPv4Network(p.pod_range)) for x in pods)
    assert len({str(x) for x in pods}) == 4
    assert ipaddress.IPv4Network(p.pod_range).subnet_of(ipaddress.IPv4Network(POD_RANGE))
    assert ipaddress.IPv4Network(p.link_cidr).subnet_of(ipaddress.IPv4Network(LINK_RANGE))
    for kwok in map(ipaddress.IPv4Network, KWOK_RANGES):
        assert not kwok.overlaps(ipaddress.IPv4Network(POD_RANGE))
        assert not kwok.overlaps(ipaddress.IPv4Network(LINK_RANGE))


@pytest.mark.parametrize(("slot", "count"), [(-1, 1), (256, 1), (0, 0), (0, 5)])
def test_bad_plan_is_refused(slot: int, count: int) -> None:
    with pytest.raises(ValueError, match=r"slot|real nodes"):
        plan(Path("/c"), slot, count)


def test_oci_archive_names_each_image(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF not really")
    archive = write_oci_archive(
        tmp_path / "a.tar", {PAUSE_IMAGE: {"Entrypoint": ["/bin/sleep", "1"]}, BUSYBOX_IMAGE: {}}, busybox
    )
    with tarfile.open(archive) as tar:
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        names = [m["annotations"]["io.containerd.image.name"] for m in index["manifests"]]
        assert names == [PAUSE_IMAGE, BUSYBOX_IMAGE]
        blobs = [m.name for m in tar.getmembers() if m.name.startswith("blobs/")]
        assert len(blobs) == 5  # one shared layer, two configs, two manifests
