"""The three images, built from their Dockerfiles with buildah, hold what runs in them and no more.

Builds them the way `make images` does (or finds the build of an unchanged tree) and looks
inside each with `buildah run`: the uid the operator's pod security context sets, the
entrypoints, the dev-only code left out, the torch layer shared. The first build on a machine
takes many minutes (torch is several GB); later runs reuse it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from coxswain.api.modelservice import DEFAULT_SERVER_IMAGE
from coxswain.api.trainingjob import DEFAULT_TRAINER_IMAGE
from coxswain.devimages import BuiltImages, build_images
from coxswain.devimages.build import OPERATOR_IMAGE, cache_home
from coxswain.devimages.buildah import Buildah
from coxswain.devimages.layout import CONTAINERD_NAME
from coxswain.podsecurity import RUN_AS_USER

pytestmark = [pytest.mark.images, pytest.mark.timeout(5400)]

REPO = Path(__file__).resolve().parents[2]
DEV_ONLY = ["coxswain.devcluster", "coxswain.nodeagent", "coxswain.devimages", "coxswain.cli.dev"]


@pytest.fixture(scope="module")
def built() -> BuiltImages:
    if shutil.which("buildah") is None or shutil.which("mmdebstrap") is None:
        pytest.skip("buildah and mmdebstrap are needed (dev/install-system-deps.sh installs them)")
    return build_images()


@pytest.fixture(scope="module")
def buildah(built: BuiltImages) -> Buildah:
    return Buildah(cache_home() / "buildah")


class Container:
    def __init__(self, buildah: Buildah, name: str) -> None:
        self.buildah, self.name = buildah, name

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [*self.buildah._base(), "run", "--isolation", "chroot", self.name, "--", *argv]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if check:
            assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done

    def python(self, code: str) -> str:
        return self.run("python", "-c", code).stdout.strip()


@pytest.fixture(scope="module", params=[OPERATOR_IMAGE, DEFAULT_TRAINER_IMAGE, DEFAULT_SERVER_IMAGE])
def image(request: pytest.FixtureRequest, buildah: Buildah) -> Iterator[tuple[str, Container]]:
    ref: str = request.param
    name = buildah.run(["from", "--pull=never", ref]).strip().splitlines()[-1]
    try:
        yield ref, Container(buildah, name)
    finally:
        buildah.run(["rm", name])


def test_images_carry_the_names_the_crds_and_the_chart_use(built: BuiltImages) -> None:
    values = yaml.safe_load((REPO / "helm/coxswain/values.yaml").read_text())
    chart = yaml.safe_load((REPO / "helm/coxswain/Chart.yaml").read_text())
    chart_image = f"{values['image']['repository']}:{values['image']['tag'] or chart['appVersion']}"
    assert [i.ref for i in built.images] == [chart_image, DEFAULT_TRAINER_IMAGE, DEFAULT_SERVER_IMAGE]
    index = json.loads((built.layout / "index.json").read_text())
    assert sorted(m["annotations"][CONTAINERD_NAME] for m in index["manifests"]) == sorted(
        i.ref for i in built.images
    )


def test_images_run_as_the_uid_of_the_pod_security_context(image: tuple[str, Container]) -> None:
    _, container = image
    assert container.run("id", "-u").stdout.strip() == str(RUN_AS_USER)
    assert container.run("id", "-g").stdout.strip() == str(RUN_AS_USER)
    deployment = (REPO / "helm/coxswain/templates/deployment.yaml").read_text()
    assert f"runAsUser: {RUN_AS_USER}" in deployment


def test_dev_only_code_is_not_in_any_image(image: tuple[str, Container]) -> None:
    _, container = image
    found = container.python(
        "import importlib.util as u; print([m for m in " + repr(DEV_ONLY) + " if u.find_spec(m)])"
    )
    assert found == "[]"
    pip = container.run("python", "-m", "pip", "--version", check=False)
    assert pip.returncode != 0, "no pip in the images: nothing is installed at run time"


def test_entrypoints_work(image: tuple[str, Container]) -> None:
    ref, container = image
    if ref == OPERATOR_IMAGE:
        assert "--namespace" in container.run("coxswain", "operator", "run", "--help").stdout
        container.python("import coxswain.handlers")
        # The chart's activator Deployment runs the same image.
        assert "--grpc-port" in container.run("coxswain", "activator", "run", "--help").stdout
        container.python("import coxswain.activator.main")
        assert container.python("import importlib.util as u; print(u.find_spec('torch'))") == "None"
        refused = container.run("coxswain", "dev", "cluster", "up", check=False)
        assert refused.returncode == 2 and "invalid choice: 'dev'" in refused.stderr
    elif ref == DEFAULT_TRAINER_IMAGE:
        assert "--config" in container.run("python", "-m", "coxswain_trainer", "--help").stdout
        assert "--config" in container.run("coxswain-trainer", "--help").stdout
        assert "--nproc-per-node" in container.run("torchrun", "--help").stdout
        container.python("import coxswain_trainer.loop, coxswain_trainer.export, custom_task.sine")
        owner = container.run("stat", "-c", "%u", "/var/lib/coxswain/checkpoints", "/models").stdout.split()
        assert owner == [str(RUN_AS_USER)] * 2
    else:
        assert "--repository" in container.run("coxswain-server", "--help").stdout
        container.python("import coxswain_server.app, coxswain_server.grpc_service")
        assert (
            container.python("import importlib.util as u; print(u.find_spec('coxswain_trainer'))") == "None"
        )


def test_trainer_and_server_share_the_torch_layer(built: BuiltImages) -> None:
    layers = {}
    for image in built.images:
        algorithm, digest = image.digest.split(":")
        manifest = json.loads((built.layout / "blobs" / algorithm / digest).read_text())
        layers[image.ref] = {layer["digest"]: layer["size"] for layer in manifest["layers"]}
    shared = set(layers[DEFAULT_TRAINER_IMAGE]) & set(layers[DEFAULT_SERVER_IMAGE])
    biggest = max(layers[DEFAULT_TRAINER_IMAGE].items(), key=lambda kv: kv[1])
    assert biggest[0] in shared, "the torch layer is stored once"
    assert biggest[0] not in layers[OPERATOR_IMAGE]


def test_the_shared_torch_stage_is_the_same_text_in_both_dockerfiles() -> None:
    def stage(path: str) -> str:
        text = (REPO / path).read_text()
        return text[text.index("# >>> shared torch stage") : text.index("# <<< shared torch stage")]

    assert stage("trainer_image/Dockerfile") == stage("server_image/Dockerfile")


def test_an_unchanged_tree_rebuilds_nothing(built: BuiltImages) -> None:
    again = build_images()
    assert not again.built
    assert again.layout == built.layout and again.images == built.images
