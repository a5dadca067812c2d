"""Pure builders: a ModelService in, Deployment/Service/ConfigMap/HPA dicts out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from coxswain.api.modelservice import ModelService
from coxswain.modelservice import builders, naming
from coxswain.modelservice.source import NotServable, ServedModel, model_from_uri, resolve

pytestmark = pytest.mark.unit


def make(**spec: Any) -> ModelService:
    base: dict[str, Any] = {
        "model": {"uri": "pvc://models/digits"},
        "repository": {"persistentVolumeClaim": {"claimName": "models"}},
        "versions": {"stable": "v1"},
    }
    base.update(spec)
    return ModelService.model_validate(
        {"metadata": {"name": "digits", "namespace": "ml", "uid": "u-1", "generation": 2}, "spec": base}
    )


def served(ms: ModelService) -> ServedModel:
    model = resolve(ms, None)
    assert isinstance(model, ServedModel)
    return model


def container(dep: dict[str, Any]) -> dict[str, Any]:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return dict(c)


def env_of(dep: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(dep)["env"]}


def test_deployment_runs_the_server_on_the_model_with_the_traffic_file() -> None:
    ms = make(batching={"maxBatchSize": 16, "maxLatencyMs": 3}, maxQueueSize=99)
    dep = builders.build_deployment(ms, served(ms), replicas=3)
    assert dep["spec"]["replicas"] == 3
    assert dep["spec"]["selector"]["matchLabels"] == {naming.LABEL_MODELSERVICE: "digits"}
    assert dep["spec"]["template"]["metadata"]["labels"][naming.LABEL_MODELSERVICE] == "digits"
    env = env_of(dep)
    assert env["COXSWAIN_SERVER_MODEL"] == "digits"
    assert env["COXSWAIN_SERVER_REPOSITORY"] == "/models"
    assert env["COXSWAIN_SERVER_TRAFFIC_FILE"] == "/etc/coxswain/traffic/traffic.json"
    assert env["COXSWAIN_SERVER_MAX_BATCH_SIZE"] == "16"
    assert env["COXSWAIN_SERVER_MAX_LATENCY_MS"] == "3.0"
    assert env["COXSWAIN_SERVER_MAX_QUEUE_SIZE"] == "99"
    assert env["COXSWAIN_SERVER_DEVICE"] == "cpu"
    assert container(dep)["command"] == ["coxswain-server"]
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["traffic"]["configMap"]["name"] == "digits-traffic"
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    mounts = {m["name"]: m for m in container(dep)["volumeMounts"]}
    assert mounts["models"]["mountPath"] == "/models" and mounts["models"]["readOnly"]


def test_probes_startup_and_readiness_on_ready_liveness_on_live_no_fixed_delay() -> None:
    ms = make()
    c = container(builders.build_deployment(ms, served(ms), 1))
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # A large model gets half an hour to load before liveness may kill it.
    assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 1800
    assert all("initialDelaySeconds" not in c[p] for p in ("startupProbe", "readinessProbe", "livenessProbe"))


def test_pods_are_locked_down_and_drain_in_flight_requests() -> None:
    ms = make()
    dep = builders.build_deployment(ms, served(ms), 1)
    pod = dep["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    sc = container(dep)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["allowPrivilegeEscalation"] is False
    env = env_of(dep)
    drain, graceful = (
        float(env["COXSWAIN_SERVER_DRAIN_SECONDS"]),
        float(env["COXSWAIN_SERVER_GRACEFUL_TIMEOUT_SECONDS"]),
    )
    assert pod["terminationGracePeriodSeconds"] > drain + graceful
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_gpus_cpu_threads_token_and_key() -> None:
    ms = make(
        resources={"gpus": 2, "cpu": "1500m", "memory": "4Gi"},
        authTokenSecretRef={"name": "tok", "key": "t"},
        encryptionKeySecretRef={"name": "k", "key": "aes"},
    )
    dep = builders.build_deployment(ms, served(ms), 1)
    res = container(dep)["resources"]
    assert res["limits"] == {"cpu": "1500m", "memory": "4Gi", "nvidia.com/gpu": "2"}
    assert res["requests"] == res["limits"]
    env = env_of(dep)
    assert env["COXSWAIN_SERVER_DEVICE"] == "cuda"
    assert env["COXSWAIN_CPU_LIMIT"] == "1"  # whole cores, rounded down (coxswain.quantity)
    assert env["COXSWAIN_SERVER_AUTH_TOKEN_FILE"] == "/etc/coxswain/auth/token"
    assert env["COXSWAIN_SERVER_KEY_FILE"] == "/etc/coxswain/key/key"
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["auth-token"]["secret"]["items"] == [{"key": "t", "path": "token"}]
    assert volumes["encryption-key"]["secret"]["secretName"] == "k"
    assert dep["spec"]["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_every_child_is_owned_and_the_hash_ignores_replicas() -> None:
    ms = make(autoscaling={"mode": "hpa"})
    model = served(ms)
    children = [
        builders.build_deployment(ms, model, 1),
        builders.build_service(ms),
        builders.build_traffic_config_map(ms, {"v1": 100}),
        builders.build_hpa(ms),
    ]
    for child in children:
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["kind"] == "ModelService" and ref["uid"] == "u-1" and ref["controller"] is True
        assert child["metadata"]["labels"][naming.LABEL_MODELSERVICE] == "digits"
    one, five = builders.build_deployment(ms, model, 1), builders.build_deployment(ms, model, 5)
    assert one["metadata"]["annotations"] == five["metadata"]["annotations"]
    other = builders.build_deployment(make(batching={"maxBatchSize": 8}), model, 1)
    assert other["metadata"]["annotations"] != one["metadata"]["annotations"]


def test_service_and_traffic_config_map() -> None:
    ms = make()
    svc = builders.build_service(ms)
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == {naming.LABEL_MODELSERVICE: "digits"}
    cm = builders.build_traffic_config_map(ms, {"v1": 90, "v2": 10})
    assert json.loads(cm["data"]["traffic.json"]) == {"weights": {"v1": 90, "v2": 10}}
    assert naming.url("digits", "ml") == "http://digits.ml.svc.cluster.local"
    assert naming.selector_string("digits") == "coxswain.dev/modelservice=digits"


def test_hpa_targets_the_modelservice_scale_subresource() -> None:
    ms = make(
        autoscaling={
            "mode": "hpa",
            "minReplicas": 0,
            "maxReplicas": 7,
            "target": {"metric": "rps", "value": 2.5},
            "scaleDownDelaySeconds": 120,
        }
    )
    hpa = builders.build_hpa(ms)["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "coxswain.dev/v1alpha1",
        "kind": "ModelService",
        "name": "digits",
    }
    assert hpa["minReplicas"] == 1 and hpa["maxReplicas"] == 7
    (metric,) = hpa["metrics"]
    assert metric["pods"]["metric"]["name"] == "coxswain_server_requests_per_second"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "2500m"}
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 120


@pytest.mark.parametrize(
    ("uri", "name", "path"),
    [
        ("pvc://models/digits", "digits", "/models"),
        ("pvc://models/team-a/digits", "digits", "/models/team-a"),
        ("file:///srv/models/digits", "digits", "/models"),
    ],
)
def test_model_uri_gives_name_and_repository_path(uri: str, name: str, path: str) -> None:
    assert model_from_uri(uri) == (name, path)


def test_training_job_ref_waits_then_serves_the_export() -> None:
    ms = make(
        model={"trainingJobRef": {"name": "train"}},
        repository=None,
        versions={"stable": "v1", "canary": "v9"},
    )
    missing = resolve(ms, None)
    assert isinstance(missing, NotServable) and missing.waiting and "does not exist" in missing.message
    running = resolve(ms, {"status": {"phase": "Running", "progress": {"percent": 40.0}}, "spec": {}})
    assert (
        isinstance(running, NotServable)
        and running.reason == "TrainingJobNotReady"
        and "40%" in running.message
    )
    failed = resolve(ms, {"status": {"phase": "Failed"}, "spec": {}})
    assert isinstance(failed, NotServable) and not failed.waiting
    job = {
        "status": {
            "phase": "Succeeded",
            "exportedModel": {"uri": "pvc://m/cnn", "modelName": "cnn", "version": "v3"},
        },
        "spec": {
            "export": {
                "repository": {"persistentVolumeClaim": {"claimName": "m"}},
                "encryption": {"keySecretRef": {"name": "key", "key": "k"}},
            }
        },
    }
    model = resolve(ms, job)
    assert isinstance(model, ServedModel)
    assert (model.name, model.stable, model.canary) == ("cnn", "v3", "v9")
    assert model.repository is not None and model.repository.persistent_volume_claim is not None
    assert model.repository.persistent_volume_claim.claim_name == "m"
    assert model.encryption_key is not None and model.encryption_key.name == "key"


def test_node_selector_and_tolerations_reach_the_pods() -> None:
    ms = make(
        nodeSelector={"pool": "gpu"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "serving", "effect": "NoSchedule"}],
        resources={"gpus": 1},
    )
    pod = builders.build_deployment(ms, served(ms), 1)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert [t["key"] for t in pod["tolerations"]] == ["dedicated", "nvidia.com/gpu"]
    plain = builders.build_deployment(make(), served(make()), 1)["spec"]["template"]["spec"]
    assert "nodeSelector" not in plain and "tolerations" not in plain


def test_server_pods_hold_requests_for_half_their_memory_and_have_no_admin_token() -> None:
    ms = make(resources={"cpu": "1", "memory": "1Gi"}, authTokenSecretRef={"name": "tok", "key": "t"})
    env = env_of(builders.build_deployment(ms, served(ms), replicas=1))
    assert env["COXSWAIN_SERVER_MAX_CONCURRENT_REQUESTS"] == "32"  # 32 x 16 MiB = 512 MiB of 1 GiB
    assert not [name for name in env if "ADMIN" in name]  # admin off: the traffic file is the only way in
    assert builders.max_concurrent_requests("64Mi") == 4
    assert builders.max_concurrent_requests("64Gi") == 128
