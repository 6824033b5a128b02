"""Kubernetes manifests: every overlay renders with `kubectl kustomize` and every object
validates (kubernetes-validate --strict, bundled schemas, offline); the policies a
reviewer checks hold on every rendered object."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest
from deploy_support import (
    DOCKER,
    OVERLAYS,
    ROOT,
    SECRET_NAME,
    Dockerfile,
    check_command,
    containers,
    expand_k8s_vars,
    image_tag,
    pod_templates,
    project_version,
    render,
)

kubernetes_validate = pytest.importorskip("kubernetes_validate")

pytestmark = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with kustomize) is not installed"
)

#: Validated against the kubectl on the machines (1.32) and a newer release.
K8S_VERSIONS = ("1.32.0", "1.35.0")
#: CRD kinds kubernetes-validate has no schema for: their pod templates are validated
#: as core PodTemplates instead, and the objects are listed as unchecked.
CRD_KINDS = {"PyTorchJob"}
SERVER_NAMES = {"clip-service", "torchserve", "minio", "label-studio-backend"}


def docs_of(overlay: str, kind: str | None = None):
    return [d for d in render(overlay) if kind is None or d["kind"] == kind]


def by_name(overlay: str, kind: str, name: str):
    (doc,) = [d for d in docs_of(overlay, kind) if d["metadata"]["name"] == name]
    return doc


def test_expected_overlays_exist() -> None:
    assert {"dev", "gpu", "gpu-multinode", "gpu-wds"} <= set(OVERLAYS)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(overlay: str, version: str) -> None:
    from kubernetes_validate.utils import validate

    unchecked = []
    for doc in render(overlay):
        if doc["kind"] in CRD_KINDS:
            unchecked.append(f"{doc['kind']}/{doc['metadata']['name']}")
            for where, template in pod_templates(doc):
                wrapped = {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": "check"},
                    "template": template,
                }
                try:
                    validate(wrapped, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    path = ".".join(map(str, e.path))
                    pytest.fail(f"{overlay}: {where} pod template: {path}: {e.message}")
            continue
        try:
            validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(map(str, e.path))
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {path}: {e.message}")
    # Unchecked CRD objects are listed, and only where expected.
    expected = ["PyTorchJob/cdul-train"] if overlay == "gpu-multinode" else []
    assert unchecked == expected
    if unchecked:
        print(f"{overlay}: not schema-checked (CRD): {unchecked}; pod templates checked")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_non_root_read_only_limited(overlay: str) -> None:
    problems = []
    for doc in render(overlay):
        for where, template in pod_templates(doc):
            spec = template["spec"]
            pod_sc = spec.get("securityContext", {})
            if spec.get("automountServiceAccountToken") is not False:
                problems.append(f"{where}: automountServiceAccountToken not false")
            if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                problems.append(f"{where}: no RuntimeDefault seccomp profile")
            for c in containers(template):
                sc = c.get("securityContext", {})
                name = f"{where}/{c['name']}"
                if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
                    problems.append(f"{name}: runAsNonRoot missing")
                if sc.get("runAsUser", pod_sc.get("runAsUser", 0)) == 0:
                    problems.append(f"{name}: runs as uid 0 or no numeric uid")
                if sc.get("readOnlyRootFilesystem") is not True:
                    problems.append(f"{name}: root filesystem writable")
                if sc.get("allowPrivilegeEscalation") is not False:
                    problems.append(f"{name}: privilege escalation allowed")
                if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                    problems.append(f"{name}: capabilities not dropped")
                res = c.get("resources", {})
                for part in ("requests", "limits"):
                    for r in ("cpu", "memory"):
                        if r not in res.get(part, {}):
                            problems.append(f"{name}: no {part}.{r}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_literal_secrets_and_known_secret_refs(overlay: str) -> None:
    problems, secrets = [], set()
    for doc in render(overlay):
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "Secret":
            problems.append(f"{where}: a Secret with values is rendered from the repository")
        if doc["kind"] == "ConfigMap":
            problems += [f"{where}: key {k}" for k in doc.get("data", {}) if SECRET_NAME.search(k)]
        for tpl_where, template in pod_templates(doc):
            for c in containers(template):
                for env in c.get("env", []):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        secrets.add((ref["name"], ref["key"]))
                    elif SECRET_NAME.search(env["name"]):
                        problems.append(f"{tpl_where}/{c['name']}: {env['name']} not from a Secret")
    assert not problems, "\n".join(problems)
    # The README tells how to create exactly these.
    assert {name for name, _ in secrets} <= {"cdul-s3", "cdul-torchserve", "cdul-ls-backend"}
    readme = (ROOT / "README.md").read_text()
    for name, key in secrets:
        assert name in readme and key in readme, f"README does not say how to create {name}/{key}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_pinned(overlay: str) -> None:
    version = project_version()
    for doc in render(overlay):
        for where, template in pod_templates(doc):
            for c in containers(template):
                tag = image_tag(c["image"])
                assert tag and tag != "latest", f"{where}/{c['name']}: {c['image']} not pinned"
                if c["image"].startswith("cdul/"):
                    assert tag == version, f"{c['image']}: project images carry {version}"
                assert c.get("imagePullPolicy") == "IfNotPresent"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servers_have_probes_and_scrape_annotations(overlay: str) -> None:
    seen = set()
    for doc in render(overlay):
        for where, template in pod_templates(doc):
            name = template["metadata"]["labels"]["app.kubernetes.io/name"]
            for c in template["spec"]["containers"]:
                if c.get("ports"):  # a server
                    for probe in ("readinessProbe", "livenessProbe"):
                        assert probe in c, f"{where}/{c['name']}: no {probe}"
            if name in SERVER_NAMES:
                seen.add(name)
                ann = template["metadata"].get("annotations", {})
                assert ann.get("prometheus.io/scrape") == "true", where
                ports = {
                    p["containerPort"] for c in containers(template) for p in c.get("ports", [])
                }
                assert int(ann["prometheus.io/port"]) in ports, where
    assert seen == SERVER_NAMES
    clip = by_name(overlay, "Deployment", "clip-service")["spec"]["template"]["spec"]
    (c,) = clip["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["grpc"]["port"] == 51000, f"clip-service {probe} is not a native gRPC probe"
    serve = by_name(overlay, "Deployment", "torchserve")["spec"]["template"]["spec"]
    (ts,) = [c for c in serve["containers"] if c["name"] == "torchserve"]
    for probe in ("startupProbe", "readinessProbe"):  # /ping says 200 while workers crash
        assert ts[probe]["exec"]["command"][:2] == ["cdul", "serve-ready"], probe
    assert docs_of(overlay, "PodDisruptionBudget")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probe_ports_name_the_containers_own_ports(overlay: str) -> None:
    """The kubelet resolves a probe's named port among its own container's ports only."""
    for doc in render(overlay):
        for where, template in pod_templates(doc):
            for c in containers(template):
                names = {p.get("name") for p in c.get("ports", [])}
                numbers = {p["containerPort"] for p in c.get("ports", [])}
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    action = c.get(probe, {})
                    port = (action.get("httpGet") or action.get("tcpSocket") or {}).get("port")
                    if port is not None:
                        assert port in (names if isinstance(port, str) else numbers), (
                            f"{where}/{c['name']} {probe}: port {port!r} is not one of its own"
                        )


def test_gpu_overlay_requests_gpus() -> None:
    for kind, name in (("Deployment", "clip-service"), ("Job", "cdul-train")):
        spec = by_name("gpu", kind, name)["spec"]["template"]["spec"]
        res = spec["containers"][0]["resources"]
        assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"], name
        assert spec["nodeSelector"], name
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"]), name
    train = by_name("gpu", "Job", "cdul-train")["spec"]["template"]["spec"]["containers"][0]
    nproc = {e["name"]: e.get("value") for e in train["env"]}["NPROC_PER_NODE"]
    assert nproc == train["resources"]["limits"]["nvidia.com/gpu"], "one process per GPU"
    assert docs_of("gpu", "HorizontalPodAutoscaler")
    job = by_name("gpu-multinode", "PyTorchJob", "cdul-train")
    for role in job["spec"]["pytorchReplicaSpecs"].values():
        res = role["template"]["spec"]["containers"][0]["resources"]
        assert res["limits"]["nvidia.com/gpu"] == job["spec"]["nprocPerNode"]
    assert not [d for d in docs_of("gpu-multinode", "Job") if d["metadata"]["name"] == "cdul-train"]


def test_dev_overlay_is_cpu_with_one_replica() -> None:
    assert "nvidia.com/gpu" not in str(render("dev"))
    for name in ("clip-service", "torchserve"):
        assert by_name("dev", "Deployment", name)["spec"]["replicas"] == 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_labeler_is_an_indexed_job_with_matching_shards_then_merge(overlay: str) -> None:
    label = by_name(overlay, "Job", "cdul-label")["spec"]
    assert label["completionMode"] == "Indexed"
    env = {e["name"]: e.get("value") for e in label["template"]["spec"]["containers"][0]["env"]}
    assert int(env["CDUL_NUM_SHARDS"]) == label["completions"] >= label["parallelism"]
    merge = by_name(overlay, "Job", "cdul-label-merge")["spec"]["template"]["spec"]
    args = merge["containers"][0]["args"]
    (config,) = [d for d in docs_of(overlay, "ConfigMap")
                 if d["metadata"]["name"].startswith("cdul-config")]  # fmt: skip
    if config["data"]["CDUL_DATASET"].startswith("wds:"):
        # Tar shards: one output per input shard, counted by the merge from their names;
        # each job index takes a range of them, and wds needs the class list.
        assert "--num-shards" not in args
        assert "$(CDUL_CLASSES)" in label["template"]["spec"]["containers"][0]["args"]
        assert label["backoffLimitPerIndex"] >= 1
    else:
        assert int(args[args.index("--num-shards") + 1]) == label["completions"]
    # The pipeline's steps wait for the operator (README "Deploy"); the bucket job does not.
    for doc in render(overlay):
        if doc["metadata"]["name"] in {"cdul-label", "cdul-label-merge", "cdul-train"}:
            spec = doc["spec"] if doc["kind"] == "Job" else doc["spec"]["runPolicy"]
            assert spec["suspend"] is True, f"{doc['kind']}/{doc['metadata']['name']}"
    assert not by_name(overlay, "Job", "minio-create-bucket")["spec"].get("suspend")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_admit_only_who_needs_it(overlay: str) -> None:
    policies = {d["metadata"]["name"]: d["spec"] for d in docs_of(overlay, "NetworkPolicy")}
    assert policies["default-deny-ingress"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    # CLIP gRPC: the labeler only.
    grpc_rules = [
        r
        for r in policies["clip-service"]["ingress"]
        if {"port": 51000, "protocol": "TCP"} in r["ports"]
    ]
    assert [r["from"] for r in grpc_rules] == [
        [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "labeler"}}},
         {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "label-studio-backend"}}}]
    ]  # fmt: skip
    # The Label Studio backend: Label Studio's pods and Prometheus, on its one port.
    (review,) = policies["label-studio-backend"]["ingress"]
    assert review["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert [f["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for f in review["from"]] == [
        "label-studio", "prometheus"
    ]  # fmt: skip
    # MinIO: pods labelled cdul.io/s3-client, which are exactly the jobs and TorchServe.
    s3_rules = [
        r
        for r in policies["minio"]["ingress"]
        if "podSelector" in r["from"][0] and "namespaceSelector" not in r["from"][0]
    ]
    assert [r["from"] for r in s3_rules] == [
        [{"podSelector": {"matchLabels": {"cdul.io/s3-client": "true"}}}]
    ]
    clients, labelers = Counter(), set()
    for doc in render(overlay):
        for where, template in pod_templates(doc):
            labels = template["metadata"]["labels"]
            if labels.get("cdul.io/s3-client") == "true":
                clients[labels["app.kubernetes.io/name"]] += 1
            if labels.get("app.kubernetes.io/name") == "labeler":
                labelers.add(where)
    assert set(clients) == {
        "labeler",
        "label-merge",
        "trainer",
        "torchserve",
        "minio-create-bucket",
        "label-studio-backend",
    }
    assert labelers == {"Job/cdul-label"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(overlay: str) -> None:
    docs = render(overlay)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for doc in docs:
        for where, template in pod_templates(doc):
            spec = template["spec"]
            for v in spec.get("volumes", []):
                if "configMap" in v:
                    assert ("ConfigMap", v["configMap"]["name"]) in names, where
                if "persistentVolumeClaim" in v:
                    assert (
                        "PersistentVolumeClaim",
                        v["persistentVolumeClaim"]["claimName"],
                    ) in names
            for c in containers(template):
                for ref in c.get("envFrom", []):
                    assert ("ConfigMap", ref["configMapRef"]["name"]) in names, where
                for env in c.get("env", []):
                    ref = env.get("valueFrom", {}).get("configMapKeyRef")
                    if ref:
                        cm = [
                            d
                            for d in docs
                            if d["kind"] == "ConfigMap" and d["metadata"]["name"] == ref["name"]
                        ]
                        assert cm and ref["key"] in cm[0]["data"], f"{where}: {ref}"
                mounts = {m["name"] for m in c.get("volumeMounts", [])}
                declared = {v["name"] for v in spec.get("volumes", [])}
                declared |= {
                    t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])
                }
                assert mounts <= declared, f"{where}/{c['name']}: {mounts - declared}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_commands_are_real_entry_points(overlay: str) -> None:
    checked = set()
    for doc in render(overlay):
        for _, template in pod_templates(doc):
            for c in containers(template):
                if not c["image"].startswith("cdul/"):
                    continue
                argv = c.get("command")
                if argv is None:  # the image's ENTRYPOINT + these args
                    image = c["image"].split("/", 1)[1].split(":")[0]
                    argv = Dockerfile.parse(DOCKER / f"{image}.Dockerfile").exec_form("ENTRYPOINT")
                argv = expand_k8s_vars([*argv, *c.get("args", [])])
                checked.update(check_command(argv))
    assert {
        "cdul clip-serve",
        "cdul label",
        "cdul label-merge",
        "cdul label-studio-backend",
        "cdul train",
        "torchserve",
    } <= checked


def test_torchserve_configmap_differs_from_deploy_config_only_where_documented() -> None:
    from cdul.serving.local import read_properties

    k8s = read_properties(ROOT / "k8s/base/torchserve/config.properties")
    deploy = read_properties(ROOT / "services/cdul/serving/config.properties")
    differ = {k for k in k8s.keys() | deploy.keys() if k8s.get(k) != deploy.get(k)}
    assert differ == {"inference_address", "disable_token_authorization", "token_expiration_min"}
    assert k8s["inference_address"] == "http://127.0.0.1:8080"  # only the auth proxy reaches it


def test_inline_fetch_model_snippet_copies_the_archive(tmp_path, monkeypatch) -> None:
    """The init container's python -c (also compose's fetch-model) really works."""
    import subprocess
    import sys

    (tmp_path / "run" / "model-store").mkdir(parents=True)
    (tmp_path / "run" / "model-store" / "cdul.mar").write_bytes(b"archive")
    tpl = by_name("dev", "Deployment", "torchserve")["spec"]["template"]["spec"]
    (init,) = tpl["initContainers"]
    env = {e["name"]: e["value"] for e in init["env"] if "value" in e}
    assert env["MODEL_STORE"] == "/home/model-server/model-store"
    monkeypatch.setenv("MODEL_URI", f"file://{tmp_path}/run/model-store")
    monkeypatch.setenv("MODEL_STORE", str(tmp_path / "store"))
    subprocess.run([sys.executable, *init["command"][1:]], check=True, timeout=60)
    assert (tmp_path / "store" / "cdul.mar").read_bytes() == b"archive"


def test_inline_create_bucket_snippet_creates_the_bucket(s3_env, s3_server, monkeypatch) -> None:
    """The minio-create-bucket Job's python -c, against the S3 test server."""
    import subprocess
    import sys
    import uuid

    job = by_name("dev", "Job", "minio-create-bucket")["spec"]["template"]["spec"]
    bucket = f"cdul-deploy-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("CDUL_BUCKET", bucket)
    for _ in range(2):  # idempotent: a rerun finds the bucket
        subprocess.run(
            [sys.executable, *job["containers"][0]["command"][1:]], check=True, timeout=60
        )
    from cdul.core.storage import open_store

    open_store(f"s3://{bucket}")  # raises when the bucket is missing


def test_gpu_clip_service_runs_several_processes_within_its_cpu_request() -> None:
    # One process serialises the request side on its GIL; the gpu overlay feeds each chip
    # with several (README "Request side"), and requests a core and a half per process.
    spec = by_name("gpu", "Deployment", "clip-service")["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    args = c["args"]
    processes = int(args[args.index("--processes") + 1])
    assert processes >= 2
    assert int(args[args.index("--max-batch") + 1]) >= 10 * processes  # a grid:3x3 image each
    assert float(c["resources"]["requests"]["cpu"]) >= 1.5 * processes
    dev = by_name("dev", "Deployment", "clip-service")["spec"]["template"]["spec"]
    assert "--processes" not in dev["containers"][0]["args"]  # a CPU encoder wants one batcher
