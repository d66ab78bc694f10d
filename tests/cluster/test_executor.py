"""The process executor runs pods as local processes and reports their real outcome."""

from __future__ import annotations

import json
import os
import sys
import textwrap

import pytest
from kubernetes import client

from lmms_devcluster import devcluster
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster


def _executor_pod_spec(script: str, **extra: object) -> client.V1PodSpec:
    container = client.V1Container(
        name="main",
        image="ignored.invalid/image:1",
        command=[sys.executable, "-c", textwrap.dedent(script)],
        env=[
            client.V1EnvVar(
                name="POD_IP",
                value_from=client.V1EnvVarSource(
                    field_ref=client.V1ObjectFieldSelector(field_path="status.podIP")
                ),
            ),
            client.V1EnvVar(
                name="POD_NAME",
                value_from=client.V1EnvVarSource(
                    field_ref=client.V1ObjectFieldSelector(field_path="metadata.name")
                ),
            ),
        ],
        **extra,  # type: ignore[arg-type]
    )
    return client.V1PodSpec(
        containers=[container],
        restart_policy="Never",
        node_selector={devcluster.EXECUTOR_LABEL: "true"},
        tolerations=[client.V1Toleration(key=devcluster.EXECUTOR_LABEL, operator="Exists")],
    )


def _job(name: str, spec: client.V1PodSpec, backoff_limit: int = 0) -> client.V1Job:
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(
            backoff_limit=backoff_limit, template=client.V1PodTemplateSpec(spec=spec)
        ),
    )


def _job_condition(batch: client.BatchV1Api, ns: str, name: str, ctype: str) -> bool:
    job = batch.read_namespaced_job(name, ns)
    return any(c.type == ctype and c.status == "True" for c in job.status.conditions or [])


def test_job_running_python_completes_with_volumes_env_and_pod_ip(
    api: client.ApiClient, namespace: str
) -> None:
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="cfg"), data={"run.yaml": "model: tiny\n"}
        ),
    )
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="tok"), string_data={"token": "s3cr3t"}),
    )
    script = """
        import json, os, socket
        ip = os.environ["POD_IP"]
        s = socket.socket(); s.bind((ip, 0)); s.listen(); s.close()
        with open("/scratch/out", "w") as fh: fh.write("x")
        report = {
            "ip": ip, "name": os.environ["POD_NAME"], "token": os.environ["TOKEN"],
            "config": open("/etc/run/run.yaml").read(),
            "secret_file": open("/var/run/tok/token").read(),
            "scratch": os.listdir("/scratch"),
        }
        open("/dev/termination-log", "w").write(json.dumps(report))
    """
    spec = _executor_pod_spec(
        script,
        volume_mounts=[
            client.V1VolumeMount(name="cfg", mount_path="/etc/run", read_only=True),
            client.V1VolumeMount(name="tok", mount_path="/var/run/tok", read_only=True),
            client.V1VolumeMount(name="scratch", mount_path="/scratch"),
        ],
    )
    spec.containers[0].env.append(
        client.V1EnvVar(
            name="TOKEN",
            value_from=client.V1EnvVarSource(
                secret_key_ref=client.V1SecretKeySelector(name="tok", key="token")
            ),
        )
    )
    spec.volumes = [
        client.V1Volume(name="cfg", config_map=client.V1ConfigMapVolumeSource(name="cfg")),
        client.V1Volume(name="tok", secret=client.V1SecretVolumeSource(secret_name="tok")),
        client.V1Volume(name="scratch", empty_dir=client.V1EmptyDirVolumeSource()),
    ]
    batch.create_namespaced_job(namespace, _job("hello", spec))
    wait_for(lambda: _job_condition(batch, namespace, "hello", "Complete"), timeout=90)
    (pod,) = core.list_namespaced_pod(namespace, label_selector="job-name=hello").items
    assert pod.status.phase == "Succeeded"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0
    report = json.loads(terminated.message)
    assert report["ip"] == pod.status.pod_ip
    assert report["ip"].startswith("127.") and report["ip"] != "127.0.0.1"
    assert report["name"] == pod.metadata.name
    assert report["token"] == "s3cr3t" and report["secret_file"] == "s3cr3t"
    assert report["config"] == "model: tiny\n"
    assert report["scratch"] == ["out"]
    # The mounts lived in the pod's private mount namespace only.
    assert not os.path.exists("/scratch/out")


def test_job_exiting_3_fails_after_its_backoff_limit(api: client.ApiClient, namespace: str) -> None:
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    spec = _executor_pod_spec("import sys; print('failing'); sys.exit(3)")
    batch.create_namespaced_job(namespace, _job("fails", spec, backoff_limit=1))
    wait_for(lambda: _job_condition(batch, namespace, "fails", "Failed"), timeout=120)
    job = batch.read_namespaced_job("fails", namespace)
    failed = next(c for c in job.status.conditions if c.type == "Failed")
    assert failed.reason == "BackoffLimitExceeded"
    assert job.status.failed == 2  # the first try and one retry
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=fails").items
    codes = [p.status.container_statuses[0].state.terminated.exit_code for p in pods]
    assert codes and all(code == 3 for code in codes)
    assert all(p.status.phase == "Failed" for p in pods)


def test_deleting_the_pod_stops_the_process(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    script = """
        import os, time
        open("/dev/termination-log", "w").write(str(os.getpid()))
        time.sleep(600)
    """
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="sleeper"), spec=_executor_pod_spec(script)
    )
    core.create_namespaced_pod(namespace, pod)
    running = wait_for(
        lambda: (
            (p := core.read_namespaced_pod("sleeper", namespace)).status.phase == "Running" and p
        ),
        timeout=60,
    )
    launcher_pid = int(running.status.container_statuses[0].container_id.split("://")[1])
    assert os.path.exists(f"/proc/{launcher_pid}")
    core.delete_namespaced_pod("sleeper", namespace, grace_period_seconds=1)

    def pod_gone() -> bool:
        try:
            core.read_namespaced_pod("sleeper", namespace)
        except client.ApiException as exc:
            return exc.status == 404
        return False

    wait_for(pod_gone, timeout=30)
    wait_for(lambda: not _running(launcher_pid), timeout=10, message="process still running")


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_pods_of_an_indexed_job_find_each_other_by_name(
    api: client.ApiClient, namespace: str
) -> None:
    """As torchrun's rendezvous needs: pod 1 reaches pod 0 at <job>-0.<subdomain>, as a
    cluster's DNS would serve it, and each pod has its own hostname."""
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    script = """
        import json, os, socket, time
        index = int(os.environ["JOB_COMPLETION_INDEX"])
        peer = "peers-0.rdzv"
        report = {"hostname": socket.gethostname()}
        if index == 0:
            server = socket.socket()
            server.bind((os.environ["POD_IP"], 29555))
            server.listen()
            conn, _ = server.accept()
            report["heard"] = conn.recv(100).decode()
        else:
            deadline = time.time() + 60
            while True:
                try:
                    sock = socket.create_connection((peer, 29555), timeout=5)
                    break
                except OSError:
                    if time.time() > deadline:
                        raise
                    time.sleep(0.5)
            report["peer"] = socket.gethostbyname(peer)
            sock.sendall(b"hello from " + socket.gethostname().encode())
        open("/dev/termination-log", "w").write(json.dumps(report))
    """
    spec = _executor_pod_spec(script)
    spec.subdomain = "rdzv"
    job = _job("peers", spec)
    job.spec.completion_mode = "Indexed"
    job.spec.completions = 2
    job.spec.parallelism = 2
    batch.create_namespaced_job(namespace, job)
    wait_for(lambda: _job_condition(batch, namespace, "peers", "Complete"), timeout=120)
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=peers").items
    reports = {
        p.metadata.labels["batch.kubernetes.io/job-completion-index"]: (
            p,
            json.loads(p.status.container_statuses[0].state.terminated.message),
        )
        for p in pods
    }
    pod0, first = reports["0"]
    _, second = reports["1"]
    assert first["hostname"] == "peers-0" and second["hostname"] == "peers-1"
    assert second["peer"] == pod0.status.pod_ip
    assert first["heard"] == "hello from peers-1"
