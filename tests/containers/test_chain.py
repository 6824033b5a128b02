"""The whole chain in containers, each run with its pod's spec from the dev overlay.

S3 stand-in -> bucket Job -> CLIP service Deployment (SERVING through its HEALTHCHECK)
-> labeler Indexed Job (2 shards) -> merge Job -> the Label Studio backend Deployment
(predictions from the run, an annotation webhook stored in it, basic auth from its
Secret) -> trainer Job (learning the reviewed label) -> TorchServe Deployment
(init container fetching the archive, TorchServe, auth-proxy sidecar) -> predictions
over HTTP from the host with the bearer key; both Prometheus ports scraped and parsed.
The same jobs, with the same arguments, then run on the host against the same S3
endpoint: pseudo labels must agree to 1e-5 and the served val mAP to 0.005.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from support.pods import Cluster, Pod, render

from cdul.core.datasets import open_dataset
from cdul.core.evaluation import evaluate
from cdul.core.pseudo_labels import read_pseudo_labels
from cdul.core.storage import open_store
from cdul.labels.formats.label_studio import labeling_config
from cdul.labels.reviews import EVENTS, read_reviews
from cdul.trainer.loop import METRICS_KEY

REPO = Path(__file__).resolve().parents[2]
CDUL = str(Path(sys.executable).with_name("cdul"))
HOST_PORTS = (9000, 51000, 9100, 8000, 8080, 8081, 8082, 7070, 7071, 29400, 9090)
SERVICES = ("minio", "clip-service", "clip-service-headless", "torchserve")
ACCESS_KEY, SECRET_KEY = "cdul-test-access", "cdul-test-secret-0123456789"
TRAIN_SCENES, VAL_SCENES = 160, 60
SETTINGS = {"TRAIN_EPOCHS": "2"}  # what a user changes with `kubectl edit configmap`
# Image builds (a fresh machine: ~4 min) and the chain twice, in containers and on the host.
pytestmark = pytest.mark.timeout(2400)


def docker(*args: str, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:3])}: {done.stderr.strip()}")
    return done.stdout.strip()


def start(pod: Pod, container: str, name: str, **kwargs) -> str:
    docker(*pod.docker_run(container, docker_name=name, **kwargs)[1:])
    return name


def wait_exit(name: str, timeout: float) -> int:
    """Exit code of a finished container; its logs in the failure message otherwise."""
    try:
        code = int(docker("wait", name, timeout=timeout))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} still running after {timeout} s:\n{logs(name)}")
    return code


def logs(name: str) -> str:
    done = subprocess.run(["docker", "logs", "--tail", "60", name], capture_output=True, text=True)
    return (done.stdout + done.stderr)[-6000:]


def run_job(pod: Pod, container: str, name: str, timeout: float = 600, **kwargs) -> None:
    start(pod, container, name, **kwargs)
    code = wait_exit(name, timeout)
    assert code == 0, f"{name} exited {code}:\n{logs(name)}"


def wait_until(what: str, check, timeout: float, name: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"{what} not within {timeout} s" + (f":\n{logs(name)}" if name else ""))


def health(name: str) -> str:
    return docker("inspect", "-f", "{{.State.Health.Status}}", name, check=False)


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def scrape(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def http(url: str, data: bytes | None = None, headers: dict[str, str] | None = None):
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except urllib.error.URLError:  # nothing listening yet
        return 0, b""


@pytest.fixture
def volumes(tmp_path: Path, world_models) -> dict[str, Path]:
    """The PersistentVolumeClaims' contents: the world (cdul-data) and models (cdul-models)."""
    data, models = tmp_path / "pvc-data", tmp_path / "pvc-models"
    subprocess.run([CDUL, "world", "generate", str(data / "world"), "--seed", "0",
                    "--train", str(TRAIN_SCENES), "--val", str(VAL_SCENES)],
                   check=True, capture_output=True)  # fmt: skip
    (models / "clip").mkdir(parents=True)
    (models / "backbone").mkdir()
    shutil.copy(world_models["clip"], models / "clip" / "cdul-tiny-rn.pt")
    shutil.copy(world_models["backbone"], models / "backbone" / "world-resnet18.pt")
    for path in (data, models, *data.rglob("*"), *models.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)  # a PVC the pods' user can read
    return {"cdul-data": data, "cdul-models": models}


@pytest.fixture
def cluster(tmp_path: Path, images, volumes, docker_label) -> Cluster:
    busy = [port for port in HOST_PORTS if not port_free(port)]
    assert not busy, f"ports {busy} are in use: the pods run on the host network here"
    objects = render(REPO / "k8s" / "overlays" / "dev")
    cluster = Cluster(
        objects=objects,
        secrets={
            "cdul-s3": {"S3_ACCESS_KEY": ACCESS_KEY, "S3_SECRET_KEY": SECRET_KEY},
            "cdul-torchserve": {"inference-key": secrets.token_urlsafe(24)},
            "cdul-ls-backend": {"BASIC_AUTH_USER": "ls", "BASIC_AUTH_PASS": secrets.token_hex(8)},
        },
        claims=volumes,
        workdir=tmp_path / "kubelet",
        hosts=SERVICES,
        image_map=images,
        label=docker_label,
    )
    cluster.find("ConfigMap", "cdul-config")["data"].update(SETTINGS)
    return cluster


def start_s3(cluster: Cluster, name: str) -> None:
    """MinIO's stand-in, hardened as the MinIO pod is (its args are MinIO's own, so the
    stand-in keeps its image's command); listens on the MinIO Service's port."""
    docker("run", "--detach", "--name", name, "--label", cluster.label, "--network", "host",
           "--read-only", "--user", "10001:10001", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges", "--tmpfs", "/tmp",
           cluster.image_map["minio/minio"])  # fmt: skip
    wait_until("the S3 stand-in listening", lambda: not port_free(9000), 60, name)


def start_clip_service(cluster: Cluster, name: str) -> None:
    """The CLIP Deployment's pod; restarts like a Deployment's pod when its process dies
    (the health probe runs every 2 s instead of 30 so the test need not wait)."""
    pod = cluster.pod("Deployment", "clip-service")
    start(pod, "clip-service", name,
          docker_flags=("--restart", "unless-stopped", "--health-interval", "2s"))  # fmt: skip
    wait_until("the CLIP service healthy (its HEALTHCHECK: gRPC SERVING)",
               lambda: health(name) == "healthy", 240, name)  # fmt: skip


def label_shards(cluster: Cluster, prefix: str, env: dict[str, str] | None = None) -> None:
    """The Indexed labeling Job: every index in parallel; a failed index is retried as
    the Job's backoffLimitPerIndex allows."""
    job = cluster.find("Job", "cdul-label")
    pod = cluster.pod("Job", "cdul-label")
    pending = {index: 0 for index in range(job["spec"]["completions"])}
    while pending:
        names = {}
        for index, attempt in pending.items():
            extra = {"JOB_COMPLETION_INDEX": str(index), **(env or {})}
            names[index] = start(pod, "labeler", f"{prefix}-{index}-{attempt}", extra_env=extra)
        for index, name in names.items():
            code = wait_exit(name, 600)
            if code == 0:
                del pending[index]
                continue
            pending[index] += 1
            assert pending[index] <= job["spec"]["backoffLimitPerIndex"], logs(name)


def served_predictions(key: str, root: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    val = open_dataset(f"voc:{root}:val")
    rows = []
    for i in range(len(val)):
        headers = {"Content-Type": "image/jpeg", "Authorization": f"Bearer {key}"}
        data = Path(val.image_path(i)).read_bytes()
        try:
            status, body = http("http://127.0.0.1:8000/predictions/cdul", data, headers)
        except TimeoutError:
            pytest.fail(f"no answer to prediction {i} within 60 s:\n"
                        f"{logs('torchserve')}\n{logs('auth-proxy')}")  # fmt: skip
        assert status == 200, f"{body[:300]!r}\n{logs('torchserve')}\n{logs('auth-proxy')}"
        answer = json.loads(body)
        rows.append([answer["probabilities"][c] for c in val.classes])
    return torch.tensor(rows), val.ground_truth_matrix(), list(val.classes)


def review_in_the_backend_pod(cluster: Cluster, config: dict[str, str]) -> None:
    """The Label Studio backend's pod on the merged run: /health open, the rest behind the
    Secret's basic auth, a prediction from the run, an annotation webhook stored in S3."""
    pod = cluster.pod("Deployment", "label-studio-backend")
    start(pod, "label-studio-backend", "label-studio-backend")
    wait_until("the backend's /health", lambda: http("http://127.0.0.1:9090/health")[0] == 200,
               120, "label-studio-backend")  # fmt: skip
    secret = cluster.secrets["cdul-ls-backend"]
    token = base64.b64encode(f"{secret['BASIC_AUTH_USER']}:{secret['BASIC_AUTH_PASS']}".encode())
    headers = {"Content-Type": "application/json", "Authorization": f"Basic {token.decode()}"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("S3_ENDPOINT", "http://127.0.0.1:9000")
        patch.setenv("S3_ACCESS_KEY", ACCESS_KEY)
        patch.setenv("S3_SECRET_KEY", SECRET_KEY)
        store = open_store(config["CDUL_RUN"])
        labels = read_pseudo_labels(store)
        image_id, classes = labels.ids[0], list(labels.classes)
        body = {"tasks": [{"id": 1, "data": {"cdul_id": image_id, "image": "x"}}],
                "label_config": labeling_config(classes)}  # fmt: skip
        data = json.dumps(body).encode()
        assert (
            http("http://127.0.0.1:9090/predict", data, {"Content-Type": "application/json"})[0]
            == 401
        )
        status, answer = http("http://127.0.0.1:9090/predict", data, headers)
        assert status == 200, answer
        (prediction,) = json.loads(answer)["results"]
        assert 0 < prediction["score"] < 1 and prediction["model_version"].startswith("cdul ")
        result = [{"from_name": "labels", "to_name": "image", "type": "choices",
                   "value": {"choices": [classes[0]]}}]  # fmt: skip
        event = {"action": "ANNOTATION_CREATED", "task": {"id": 1, "data": {"cdul_id": image_id}},
                 "annotation": {"id": 5, "task": 1, "result": result}}  # fmt: skip
        status, answer = http("http://127.0.0.1:9090/webhook", json.dumps(event).encode(), headers)
        assert status == 201, answer
        assert read_reviews(store).decisions == {image_id: [classes[0]]}


def copy_reviews(source: str, target: str) -> None:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {"S3_ENDPOINT": "http://127.0.0.1:9000", "S3_ACCESS_KEY": ACCESS_KEY,
                            "S3_SECRET_KEY": SECRET_KEY}.items():  # fmt: skip
            patch.setenv(name, value)
        inside, outside = open_store(source), open_store(target)
        keys = inside.list(EVENTS)
        assert keys
        for key in keys:
            outside.write_bytes(key, inside.read_bytes(key))


def host_args(argv: list[str], volumes: dict[str, Path]) -> list[str]:
    """A container's arguments for the same job run on the host: mount paths -> host paths."""
    mapping = {"/data/": f"{volumes['cdul-data']}/", "/models/": f"{volumes['cdul-models']}/"}
    out = []
    for arg in argv:
        for inside, outside in mapping.items():
            arg = arg.replace(f":{inside}", f":{outside}")
            arg = outside + arg[len(inside) :] if arg.startswith(inside) else arg
        out.append(arg)
    return out


def run_on_host(
    cluster: Cluster,
    kind: str,
    name: str,
    container: str,
    env: dict[str, str],
    volumes: dict[str, Path],
    extra: dict[str, str] | None = None,
) -> list[str]:
    pod = cluster.pod(kind, name)
    spec = pod.container(container)
    container_env = {**pod.env(spec), **(extra or {})}
    command, args = pod.argv(spec, container_env)
    assert command, f"{name}/{container} relies on the image's entrypoint"
    if command[0] == "torchrun":  # one process: torchrun's launcher changes nothing here
        command = command[command.index("--no-python") + 1 :]
    argv = [CDUL, *command[1:], *host_args(args, volumes)]
    done = subprocess.run(argv, env={**env, **container_env, **(extra or {}),
                                     "S3_ENDPOINT": "http://127.0.0.1:9000"},
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, f"{argv}: {done.stderr[-3000:]}"
    return argv


def test_the_chain_runs_in_its_pods_and_matches_the_host(cluster: Cluster, volumes, tmp_path):
    from cdul.clip_service import launch

    config = cluster.config_map("cdul-config")
    start_s3(cluster, "s3")
    run_job(cluster.pod("Job", "minio-create-bucket"), "create-bucket", "create-bucket", 120)
    start_clip_service(cluster, "clip")
    label_shards(cluster, "label")
    run_job(cluster.pod("Job", "cdul-label-merge"), "label-merge", "label-merge", 300)
    review_in_the_backend_pod(cluster, config)
    run_job(cluster.pod("Job", "cdul-train"), "trainer", "train", 900)

    serve = cluster.pod("Deployment", "torchserve")
    run_job(serve, "fetch-model", "fetch-model", 120)
    start(serve, "torchserve", "torchserve")
    start(serve, "auth-proxy", "auth-proxy")
    probe = serve.container("torchserve")["startupProbe"]["exec"]["command"]
    wait_until("TorchServe's startup probe (exec in its container) passing",
               lambda: subprocess.run(["docker", "exec", "torchserve", *probe],
                                      capture_output=True, timeout=30).returncode == 0,
               240, "torchserve")  # fmt: skip
    assert http("http://127.0.0.1:8000/ping")[0] == 200  # through the proxy, no key needed
    key = cluster.secrets["cdul-torchserve"]["inference-key"]
    probabilities, truth, classes = served_predictions(key, volumes["cdul-data"] / "world")
    served = evaluate(probabilities, truth, classes).mean_ap

    # The proxy refuses a missing or wrong key; TorchServe refuses garbage with a 4xx.
    image = next((volumes["cdul-data"] / "world" / "JPEGImages").iterdir()).read_bytes()
    assert http("http://127.0.0.1:8000/predictions/cdul", image)[0] == 401
    wrong = {"Authorization": "Bearer wrong", "Content-Type": "image/jpeg"}
    assert http("http://127.0.0.1:8000/predictions/cdul", image, wrong)[0] == 401
    garbage = {"Authorization": f"Bearer {key}", "Content-Type": "image/jpeg"}
    assert http("http://127.0.0.1:8000/predictions/cdul", b"not a jpeg", garbage)[0] == 400

    clip_metrics, serve_metrics = scrape(9100), scrape(8082)
    assert any(name.startswith("cdul_clip") for name in clip_metrics), sorted(clip_metrics)
    assert "ts_inference_requests" in serve_metrics or any(
        name.startswith("ts_") for name in serve_metrics), sorted(serve_metrics)  # fmt: skip

    # The same jobs on the host, same arguments, same S3 endpoint, another run prefix.
    host_run = config["CDUL_RUN"] + "-host"
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path),
           "S3_ACCESS_KEY": ACCESS_KEY, "S3_SECRET_KEY": SECRET_KEY}  # fmt: skip
    clip_args = cluster.pod("Deployment", "clip-service").argv(
        cluster.pod("Deployment", "clip-service").container("clip-service"), config
    )[1]
    clip_model = clip_args[clip_args.index("--model") + 1]
    pretrained = host_args([clip_args[clip_args.index("--pretrained") + 1]], volumes)[0]
    process, port = launch.spawn(["--model", clip_model, "--pretrained", pretrained,
                                  "--device", "cpu", "--metrics-port", "-1"],
                                 stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for index in range(2):
            run_on_host(cluster, "Job", "cdul-label", "labeler", env, volumes,
                        {"CDUL_RUN": host_run, "JOB_COMPLETION_INDEX": str(index),
                         "CDUL_CLIP_ENDPOINTS": f"127.0.0.1:{port}"})  # fmt: skip
    finally:
        launch.stop(process)
    run_on_host(cluster, "Job", "cdul-label-merge", "label-merge", env, volumes,
                {"CDUL_RUN": host_run})  # fmt: skip
    copy_reviews(config["CDUL_RUN"], host_run)  # the host trainer learns the same review
    run_on_host(cluster, "Job", "cdul-train", "trainer", env, volumes, {"CDUL_RUN": host_run})

    s3 = {"S3_ENDPOINT": "http://127.0.0.1:9000", **{k: env[k] for k in env if "S3" in k}}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3.items():
            patch.setenv(name, value)
        inside, outside = open_store(config["CDUL_RUN"]), open_store(host_run)
        labels_in, labels_out = read_pseudo_labels(inside), read_pseudo_labels(outside)
        metrics_in = [json.loads(x) for x in inside.read_text(METRICS_KEY).splitlines() if x]
        metrics_out = [json.loads(x) for x in outside.read_text(METRICS_KEY).splitlines() if x]
    assert len(labels_in) == len(labels_out) == TRAIN_SCENES
    assert labels_in.ids == labels_out.ids
    for column in ("global", "aggregate", "final"):
        assert torch.allclose(labels_in[column], labels_out[column], atol=1e-5, rtol=0), column
    host_map = metrics_out[-1]["val_map"]
    print(
        f"served val mAP {served:.4f} (containers) vs {host_map:.4f} (host trainer); "
        f"trainer in containers {metrics_in[-1]['val_map']:.4f}"
    )
    assert abs(served - host_map) <= 0.005


def test_clip_service_container_killed_mid_labeling_then_stopped_mid_stream(
    cluster: Cluster, volumes
) -> None:
    """Its process killed (as an OOM kill would) while two shards label through it: the
    container restarts as a Deployment's pod does and the run completes, every image
    once. Then `docker stop` during a stream: accepted requests are answered, exit 0."""
    import grpc

    from cdul._proto.cdul.similarity.v1 import similarity_pb2 as pb
    from cdul._proto.cdul.similarity.v1 import similarity_pb2_grpc as pb_grpc
    from cdul.clip_service.client import label_set_ref
    from cdul.world.shapes import SHAPES

    config = cluster.find("ConfigMap", "cdul-config")["data"]
    config.update({"CDUL_SNIPPETS": "patch:16/8", "CDUL_RUN": "s3://cdul/runs/fault"})
    start_s3(cluster, "s3")
    run_job(cluster.pod("Job", "minio-create-bucket"), "create-bucket", "create-bucket", 120)
    start_clip_service(cluster, "clip")
    env = {"S3_ENDPOINT": "http://127.0.0.1:9000", "S3_ACCESS_KEY": ACCESS_KEY,
           "S3_SECRET_KEY": SECRET_KEY}  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        store = open_store(config["CDUL_RUN"])
        labeling = threading.Thread(target=label_shards, args=(cluster, "label"))
        labeling.start()
        wait_until("a first part written", lambda: any("/parts/" in k for k in store.list()), 300)
        pid = docker("inspect", "-f", "{{.State.Pid}}", "clip")
        subprocess.run(["kill", "-KILL", pid], check=True)
        wait_until("the CLIP container restarted", lambda: docker(
            "inspect", "-f", "{{.RestartCount}}", "clip") == "1", 60, "clip")  # fmt: skip
        labeling.join(900)
        run_job(cluster.pod("Job", "cdul-label-merge"), "label-merge", "label-merge", 300)
        labels = read_pseudo_labels(store)
    train_ids = open_dataset(f"voc:{volumes['cdul-data'] / 'world'}:train").ids()
    assert sorted(labels.ids) == sorted(train_ids)  # every image, once
    wait_until("the CLIP service healthy again", lambda: health("clip") == "healthy", 240, "clip")

    stub = pb_grpc.SimilarityStub(grpc.insecure_channel("127.0.0.1:51000"))
    labels_ref = label_set_ref(list(SHAPES))
    images = sorted((volumes["cdul-data"] / "world" / "JPEGImages").iterdir())[:16]
    requests = [pb.SnippetRequest(labels=labels_ref, snippet_spec="patch:16/8",
                                  image=pb.Image(id=p.stem, data=p.read_bytes()))
                for p in images]  # fmt: skip
    answers, status = [], "OK"
    stopper = threading.Thread(
        target=docker, args=("stop", "--time", "45", "clip"), kwargs={"timeout": 90}
    )
    try:
        for answer in stub.ScoreStream(iter(requests), timeout=120):
            if not answers:
                stopper.start()  # stop once the stream is accepted and answering
            answers.append(answer)
    except grpc.RpcError as error:
        status = error.code().name
    assert stopper.ident is not None, f"no answer before the stop: {status}"
    stopper.join(90)
    assert docker("inspect", "-f", "{{.State.ExitCode}}", "clip") == "0", logs("clip")
    assert [a.error for a in answers if a.error] == []
    print(f"stream during docker stop: {len(answers)} of {len(requests)} answered, {status}")
    assert status == "OK" and len(answers) == len(requests)
