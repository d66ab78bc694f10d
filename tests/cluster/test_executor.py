"""The process executor runs pods as local processes and reports their real outcome."""

from __future__ import annotations

import contextlib
import functools
import http.server
import ipaddress
import json
import os
import subprocess
import sys
import textwrap
import threading
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client

from lmms_devcluster import devcluster, podnet
from lmms_devcluster.imagestore import HOST_IMAGE
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster


def _executor_pod_spec(script: str, **extra: object) -> client.V1PodSpec:
    container = client.V1Container(
        name="main",
        image=HOST_IMAGE,
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
        **extra,
    )
    return client.V1PodSpec(
        containers=[container],
        restart_policy="Never",
        node_selector={devcluster.EXECUTOR_LABEL: "true"},
        tolerations=[client.V1Toleration(key=devcluster.EXECUTOR_LABEL, operator="Exists")],
    )


def _pod_network(cluster: devcluster.DevCluster) -> ipaddress.IPv4Network | None:
    """The subnet of the executor's pod network (``None`` where pods share the node's)."""
    directory = cluster.directory / "executor"
    if not (directory / "cni").exists():  # made when the executor starts its pod network
        return None
    return podnet.identity(directory)[1]


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
    cluster: devcluster.DevCluster, api: client.ApiClient, namespace: str
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
    subnet = _pod_network(cluster)
    if subnet is None:  # not root: the node's loopback
        assert report["ip"].startswith("127.") and report["ip"] != "127.0.0.1"
    else:  # its own network namespace, on the devcluster's bridge
        assert ipaddress.ip_address(report["ip"]) in subnet
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
            return bool(exc.status == 404)
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


def _pod(name: str, container: client.V1Container, **spec: object) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            containers=[container],
            restart_policy=spec.pop("restart_policy", "Never"),
            node_selector={devcluster.EXECUTOR_LABEL: "true"},
            tolerations=[client.V1Toleration(key=devcluster.EXECUTOR_LABEL, operator="Exists")],
            **spec,
        ),
    )


def _terminated(core: client.CoreV1Api, ns: str, name: str) -> client.V1ContainerStatus:
    def probe() -> client.V1ContainerStatus | None:
        statuses = core.read_namespaced_pod(name, ns).status.container_statuses or []
        return next((s for s in statuses if s.state.terminated), None)

    return wait_for(probe, timeout=120)


IN_IMAGE = """
import errno, json, os, ssl, urllib.request
report = {
    "uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups()),
    "cwd": os.getcwd(), "path": os.environ["PATH"], "home": os.environ.get("HOME"),
    "image_env": os.environ.get("PYTHONDONTWRITEBYTECODE"),
    "pod_env": os.environ.get("FROM_POD"),
    "venv": os.path.exists("/opt/lmms/bin/lmms-operator"),
    "host_checkout": os.path.exists(HOST_CHECKOUT),
}
try:
    open("/etc/written", "w")
    report["root"] = "writable"
except OSError as exc:
    report["root"] = errno.errorcode[exc.errno]
with open("/tmp/scratch", "w") as fh:
    fh.write("ok")
# The ServiceAccount token the kubelet projects, used the way client libraries do.
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
url = "https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews" % (
    os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
request = urllib.request.Request(url, data=body.encode(), method="POST", headers={
    "Authorization": "Bearer " + open(sa + "/token").read(),
    "Content-Type": "application/json"})
ctx = ssl.create_default_context(cafile=sa + "/ca.crt")
with urllib.request.urlopen(request, context=ctx, timeout=10) as resp:
    report["user"] = json.load(resp)["status"]["userInfo"]["username"]
report["namespace"] = open(sa + "/namespace").read()
open("/dev/termination-log", "w").write(json.dumps(report))
"""


def test_a_pod_runs_in_its_image_merged_with_the_pod_spec_as_a_kubelet_does(
    api: client.ApiClient, namespace: str, images: dict[str, str]
) -> None:
    """The operator image: its user, env and PATH; the pod's command over its entrypoint;
    a read-only root; the projected ServiceAccount token; the image's digest."""
    core = client.CoreV1Api(api)
    image = images["lmms-operator"]
    checkout = str(devcluster.REPO_ROOT)
    report_container = client.V1Container(
        name="main",
        image=image,
        command=["python", "-c", IN_IMAGE.replace("HOST_CHECKOUT", repr(checkout))],
        env=[client.V1EnvVar(name="FROM_POD", value="yes")],
        volume_mounts=[client.V1VolumeMount(name="tmp", mount_path="/tmp")],
        security_context=client.V1SecurityContext(read_only_root_filesystem=True),
        termination_message_policy="FallbackToLogsOnError",
    )
    core.create_namespaced_pod(
        namespace,
        _pod(
            "report",
            report_container,
            volumes=[client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource())],
            security_context=client.V1PodSecurityContext(fs_group=2000, run_as_non_root=True),
        ),
    )
    # args alone replace the image's cmd and keep its entrypoint (lmms-operator).
    args_container = client.V1Container(
        name="main",
        image=image,
        args=["no-such-command"],
        termination_message_policy="FallbackToLogsOnError",
    )
    core.create_namespaced_pod(namespace, _pod("args", args_container))
    # runAsNonRoot with a root user is refused before anything runs.
    root_container = client.V1Container(
        name="main",
        image=image,
        security_context=client.V1SecurityContext(run_as_user=0, run_as_non_root=True),
    )
    core.create_namespaced_pod(namespace, _pod("root", root_container))

    status = _terminated(core, namespace, "report")
    assert status.state.terminated.exit_code == 0, status.state.terminated.message
    report = json.loads(status.state.terminated.message)
    assert (report["uid"], report["gid"]) == (1000, 1000)  # the image's USER 1000:1000
    assert 2000 in report["groups"]  # the pod's fsGroup
    assert report["cwd"] == "/"
    assert report["path"].startswith("/opt/lmms/bin:")  # the image's ENV
    assert report["home"] == "/tmp" and report["image_env"] == "1"
    assert report["pod_env"] == "yes"
    assert report["venv"] and not report["host_checkout"]  # the image's files only
    assert report["root"] == "EROFS"  # readOnlyRootFilesystem
    assert report["user"] == f"system:serviceaccount:{namespace}:default"
    assert report["namespace"] == namespace
    inspected = subprocess.run(
        ["buildah", "--storage-driver", "vfs", "inspect", "--type", "image", image],
        capture_output=True,
        text=True,
        check=True,
    )
    digest = json.loads(inspected.stdout)["FromImageDigest"]
    assert status.image_id == f"{image.rsplit(':', 1)[0]}@{digest}"

    args = _terminated(core, namespace, "args").state.terminated
    assert args.exit_code == 2
    assert "no-such-command" in args.message and "lmms-operator" in args.message

    root = _terminated(core, namespace, "root").state.terminated
    assert root.reason == "CreateContainerConfigError"
    assert "runAsNonRoot" in root.message


def test_an_image_not_in_the_store_waits_in_errimagepull_then_imagepullbackoff(
    api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    container = client.V1Container(name="main", image="registry.invalid/none:1")
    core.create_namespaced_pod(namespace, _pod("nopull", container))
    seen: set[str] = set()

    def waiting() -> bool:
        statuses = core.read_namespaced_pod("nopull", namespace).status.container_statuses
        for s in statuses or []:
            if s.state.waiting:
                seen.add(s.state.waiting.reason)
                assert "registry.invalid/none:1" in s.state.waiting.message
        return {"ErrImagePull", "ImagePullBackOff"} <= seen

    wait_for(waiting, timeout=30, interval=0.2)
    assert core.read_namespaced_pod("nopull", namespace).status.phase == "Pending"


PROBED = """
import http.server, os, sys, threading, time
time.sleep(2)  # not ready at first
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/ready" else 500)
        self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer((os.environ["POD_IP"], 8080), H).serve_forever()
"""


def test_probes_drive_readiness_and_a_failing_liveness_probe_restarts(
    api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    spec = _executor_pod_spec(PROBED)
    container = spec.containers[0]
    container.ports = [client.V1ContainerPort(name="http", container_port=8080)]
    container.readiness_probe = client.V1Probe(
        http_get=client.V1HTTPGetAction(path="/ready", port="http"), period_seconds=1
    )
    core.create_namespaced_pod(
        namespace, client.V1Pod(metadata=client.V1ObjectMeta(name="probed"), spec=spec)
    )

    def ready(name: str) -> bool:
        pod = core.read_namespaced_pod(name, namespace)
        conds = {c.type: c.status for c in pod.status.conditions or []}
        return pod.status.phase == "Running" and conds.get("Ready") == "True"

    wait_for(lambda: core.read_namespaced_pod("probed", namespace).status.pod_ip)
    assert not ready("probed")  # the server sleeps before it listens
    wait_for(lambda: ready("probed"), timeout=30)

    spec = _executor_pod_spec(PROBED)
    spec.restart_policy = "Always"
    spec.containers[0].liveness_probe = client.V1Probe(
        http_get=client.V1HTTPGetAction(path="/alive", port=8080),  # answers 500
        initial_delay_seconds=3,
        period_seconds=1,
        failure_threshold=2,
        termination_grace_period_seconds=1,
    )
    core.create_namespaced_pod(
        namespace, client.V1Pod(metadata=client.V1ObjectMeta(name="unlive"), spec=spec)
    )

    # A startup probe that never passes: the container is restarted, and its readiness
    # probe (which would pass) is never run meanwhile.
    spec = _executor_pod_spec(PROBED)
    spec.restart_policy = "Always"
    spec.containers[0].startup_probe = client.V1Probe(
        tcp_socket=client.V1TCPSocketAction(port=9),  # nothing listens there
        period_seconds=1,
        failure_threshold=3,
        termination_grace_period_seconds=1,
    )
    spec.containers[0].readiness_probe = client.V1Probe(
        http_get=client.V1HTTPGetAction(path="/ready", port=8080), period_seconds=1
    )
    core.create_namespaced_pod(
        namespace, client.V1Pod(metadata=client.V1ObjectMeta(name="unstarted"), spec=spec)
    )

    def restarted(name: str) -> bool:
        statuses = core.read_namespaced_pod(name, namespace).status.container_statuses
        return bool(statuses) and statuses[0].restart_count >= 1

    wait_for(lambda: restarted("unlive"), timeout=60)
    wait_for(lambda: restarted("unstarted"), timeout=60)
    assert not ready("unstarted")


def test_pods_have_addresses_on_the_bridge_that_services_and_the_host_reach(
    cluster: devcluster.DevCluster, api: client.ApiClient, namespace: str
) -> None:
    """Each pod has a network namespace of its own with an address on the devcluster's
    bridge (the real CNI bridge plugin): a Service's EndpointSlice takes it, the host
    reaches the pod there, pods reach each other, and a pod still reaches the host's
    loopback services (the API server, a fixture) at 127.0.0.1."""
    subnet = _pod_network(cluster)
    if subnet is None:
        pytest.skip(
            "pods share the node's network here (not root, or LMMS_DEVCLUSTER_POD_NETWORK=loopback)"
        )
    core, discovery = client.CoreV1Api(api), client.DiscoveryV1Api(api)

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"host says hi")

        def log_message(self, *a: object) -> None:
            pass

    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    script = f"""
        import http.server, json, os, socket, ssl, urllib.request
        api = os.environ["KUBERNETES_SERVICE_HOST"] + ":" + os.environ["KUBERNETES_SERVICE_PORT"]
        ctx = ssl._create_unverified_context()
        try:
            urllib.request.urlopen(f"https://{{api}}/readyz", context=ctx, timeout=5)
            reached_api = "200"
        except urllib.error.HTTPError as exc:  # anonymous: 401/403 is an answer too
            reached_api = str(exc.code)
        fixture = urllib.request.urlopen("http://127.0.0.1:{host.server_address[1]}/", timeout=5)
        with open("/tmp/net-{namespace}-" + os.environ["POD_NAME"], "w") as fh:
            json.dump({{"api": reached_api, "fixture": fixture.read().decode(),
                        "ifaces": sorted(n for _, n in socket.if_nameindex())}}, fh)
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers(); self.wfile.write(b"pod says hi")
        http.server.HTTPServer((os.environ["POD_IP"], 8080), H).serve_forever()
    """
    labels = {"app": "web"}
    for name in ("web-0", "web-1"):
        spec = _executor_pod_spec(script)
        spec.containers[0].ports = [client.V1ContainerPort(container_port=8080, name="http")]
        core.create_namespaced_pod(
            namespace,
            client.V1Pod(metadata=client.V1ObjectMeta(name=name, labels=labels), spec=spec),
        )
    core.create_namespaced_service(
        namespace,
        client.V1Service(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1ServiceSpec(
                selector=labels, ports=[client.V1ServicePort(port=80, target_port="http")]
            ),
        ),
    )
    try:

        def running() -> list[client.V1Pod] | None:
            pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
            return pods if all(p.status.phase == "Running" for p in pods) else None

        pods = wait_for(running, timeout=60)
        ips = sorted(p.status.pod_ip for p in pods)
        assert len(set(ips)) == 2 and all(ipaddress.ip_address(ip) in subnet for ip in ips)

        def endpoints() -> list[str] | None:
            slices = discovery.list_namespaced_endpoint_slice(
                namespace, label_selector="kubernetes.io/service-name=web"
            ).items
            found = sorted(a for s in slices for e in s.endpoints or [] for a in e.addresses)
            return found if found == ips else None

        wait_for(endpoints, timeout=30)  # the EndpointSlice controller took them
        for ip in ips:  # the host reaches each pod at its address
            body = wait_for(functools.partial(_get, f"http://{ip}:8080/"), timeout=30)
            assert body == "pod says hi"
        for pod in pods:
            path = f"/tmp/net-{namespace}-{pod.metadata.name}"
            report = json.loads(wait_for(functools.partial(_read, path), timeout=30))
            assert report["ifaces"] == ["eth0", "lo"]  # its own namespace, not the node's
            assert report["fixture"] == "host says hi"  # the host's 127.0.0.1
            assert report["api"] in ("200", "401", "403")
        # A pod reaches another pod at its address (the bridge).
        probe = _executor_pod_spec(
            f"import urllib.request; urllib.request.urlopen('http://{ips[1]}:8080/', timeout=5)"
        )
        client.BatchV1Api(api).create_namespaced_job(namespace, _job("probe", probe))
        wait_for(
            lambda: _job_condition(client.BatchV1Api(api), namespace, "probe", "Complete"),
            timeout=60,
        )
    finally:
        host.shutdown()
        for name in ("web-0", "web-1"):
            with contextlib.suppress(OSError):
                os.unlink(f"/tmp/net-{namespace}-{name}")


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text() or None
    except OSError:
        return None


def test_a_native_sidecar_serves_the_pods_containers_on_its_loopback_and_is_restarted(
    api: client.ApiClient, namespace: str
) -> None:
    """An init container with restartPolicy Always starts first, is restarted when it
    exits (restartCount, lastState with its last log lines), serves the regular
    containers on the pod's 127.0.0.1 and shared volumes, and is stopped once they have
    all exited: the pod Succeeds with a status per container, as a kubelet reports it."""
    core, batch = client.CoreV1Api(api), client.BatchV1Api(api)
    server = """
        import http.server, os, sys
        if not os.path.exists("/shared/started"):
            open("/shared/started", "w").write("1")
            print("first start: dying on purpose", flush=True)
            sys.exit(7)
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = open("/shared/started").read().encode()
                self.send_response(200); self.end_headers(); self.wfile.write(b"served " + body)
        http.server.HTTPServer(("127.0.0.1", 8000), H).serve_forever()
    """
    main = """
        import time, urllib.request
        for _ in range(300):
            try:
                answer = urllib.request.urlopen("http://127.0.0.1:8000/", timeout=2).read()
                break
            except OSError:
                time.sleep(0.2)
        open("/dev/termination-log", "w").write(answer.decode())
    """
    spec = _executor_pod_spec(main)
    shared = client.V1VolumeMount(name="shared", mount_path="/shared")
    spec.containers[0].volume_mounts = [shared]
    spec.containers.append(
        client.V1Container(
            name="second",
            image=HOST_IMAGE,
            command=[sys.executable, "-c", "open('/dev/termination-log', 'w').write('two')"],
        )
    )
    spec.init_containers = [
        client.V1Container(
            name="server",
            image=HOST_IMAGE,
            restart_policy="Always",
            command=[sys.executable, "-c", textwrap.dedent(server)],
            volume_mounts=[shared],
            termination_message_policy="FallbackToLogsOnError",
        )
    ]
    spec.volumes = [client.V1Volume(name="shared", empty_dir=client.V1EmptyDirVolumeSource())]
    spec.termination_grace_period_seconds = 5
    batch.create_namespaced_job(namespace, _job("sidecar", spec))
    wait_for(lambda: _job_condition(batch, namespace, "sidecar", "Complete"), timeout=120)
    (pod,) = core.list_namespaced_pod(namespace, label_selector="job-name=sidecar").items
    assert pod.status.phase == "Succeeded"
    statuses = {s.name: s for s in pod.status.container_statuses}
    assert list(statuses) == ["main", "second"]
    assert statuses["main"].state.terminated.exit_code == 0
    assert statuses["main"].state.terminated.message == "served 1"
    assert statuses["second"].state.terminated.message == "two"
    (sidecar,) = pod.status.init_container_statuses
    assert sidecar.name == "server" and sidecar.restart_count == 1
    last = sidecar.last_state.terminated
    assert last.exit_code == 7 and "first start: dying on purpose" in last.message
    # Stopped with SIGTERM once the regular containers had exited.
    assert sidecar.state.terminated.exit_code == 143


def test_a_sidecar_that_cannot_start_holds_the_regular_containers(
    api: client.ApiClient, namespace: str
) -> None:
    """The regular containers start only once the sidecar has: while its image cannot be
    pulled they wait in PodInitializing, and the pod is Pending."""
    core = client.CoreV1Api(api)
    spec = _executor_pod_spec("print('never')")
    spec.init_containers = [
        client.V1Container(
            name="engine", image="registry.invalid/engine:1", restart_policy="Always"
        )
    ]
    core.create_namespaced_pod(
        namespace, client.V1Pod(metadata=client.V1ObjectMeta(name="held"), spec=spec)
    )

    def waiting() -> client.V1Pod | None:
        pod = core.read_namespaced_pod("held", namespace)
        inits = pod.status.init_container_statuses or []
        if inits and inits[0].state.waiting and "ImagePull" in inits[0].state.waiting.reason:
            return pod
        return None

    pod = wait_for(waiting, timeout=60)
    assert pod.status.phase == "Pending"
    assert pod.status.container_statuses[0].state.waiting.reason == "PodInitializing"
