"""The inference-engine path (``spec.model.engine``): the engine's OpenAI-compatible server
as a native sidecar of the run's pod, and what its container's status tells. Pure.

- ``problems``: what a spec naming an engine must also say (type openai, the checkpoint
  in pretrained, GPUs, one node) and whether this operator has the engine's image;
- ``attach``: the pod template with the engine container (an initContainer with
  ``restartPolicy: Always``: started before the runner, stopped once the runner exits,
  so the pod completes with it), listening on the pod's loopback only, with tensor
  parallel size = the pod's GPUs. The engine requests the run's GPUs, CPU and memory;
  the runner a small request = limit of its own (``RUNNER_RESOURCES``, the operator's
  LMMS_ENGINE_RUNNER_CPU and LMMS_ENGINE_RUNNER_MEMORY), added to the engine's (a
  sidecar's requests add to the regular containers'): every container has limits (a
  ResourceQuota on limits admits the pod) and the pod asks for the GPUs once. The runner
  gets ``LMMS_MODEL_URL`` and
  ``LMMS_MODEL_WAIT_SECONDS`` and waits for the server itself; it gets no
  ``OPENAI_API_KEY`` (the engine checks none, and the runner gives its client the
  placeholder ``EMPTY``): its own bearer token never goes to the engine, whose log lines
  may end in the run's status;
- ``observed``: a run whose engine exited while the runner had not finished ends Failed
  with reason ``EngineFailed`` and the engine's last log lines (its termination message,
  ``FallbackToLogsOnError``), redacted and bounded; an engine image that cannot be
  pulled shows (and fails) as the runner's image would;
- ``loading``: while the runner waits for the server, the run reads ``ModelLoading``.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..api import EvalRunSpec
from ..errors import InvalidSpec, Problem
from . import reasons as R
from . import status as st
from .credentials import masked
from .grammar import escape_hidden
from .times import fmt_time, parse_time

ENGINES = ("vllm", "sglang")
CONTAINER = "engine"
HOST = "127.0.0.1"
PORT = 8000
URL = f"http://{HOST}:{PORT}/v1"
#: Seconds the runner waits for the server to answer (a large checkpoint is downloaded
#: and loaded first); never longer than the run's own timeoutSeconds.
WAIT_SECONDS = 3600
#: At most this many of the engine's last lines, and characters, in the run's status.
MAX_LINES = 20
MAX_CHARS = 2000
#: Exit codes of an engine the kubelet stopped (SIGTERM, SIGKILL after the grace period).
STOPPED = frozenset({0, 137, 143})
_PULL_FATAL = st.IMAGE_PULL_FATAL
_PULL_RETRYING = st.IMAGE_PULL_RETRYING
_USERINFO = re.compile(r"(://)[^/@\s]+@")
#: The runner's own request = limit beside an engine (the operator's defaults).
RUNNER_RESOURCES: tuple[tuple[str, str], ...] = (("cpu", "1"), ("memory", "4Gi"))
#: Positive CPU and memory quantities (``500m``, ``2``; ``512Mi``, ``4Gi``, ``4G``).
_QUANTITIES = {
    "cpu": re.compile(r"(?=.*[1-9])[0-9]{1,6}(\.[0-9]{1,3})?m?"),
    "memory": re.compile(r"(?=.*[1-9])[0-9]{1,12}(\.[0-9]{1,3})?([KMGT]i?|k)?"),
}


def runner_resources(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """LMMS_ENGINE_RUNNER_CPU and LMMS_ENGINE_RUNNER_MEMORY (unset or empty: the
    defaults); a value that is not a positive quantity is a ValueError naming it."""
    out = []
    for resource, default in RUNNER_RESOURCES:
        name = f"LMMS_ENGINE_RUNNER_{resource.upper()}"
        raw = environ.get(name, "").strip() or default
        if not _QUANTITIES[resource].fullmatch(raw):
            raise ValueError(f"{name} must be a positive quantity such as {default}, got {raw!r}")
        out.append((resource, raw))
    return tuple(out)


#: A container that requests no GPU sees none: the runner image's CUDA base sets
#: NVIDIA_VISIBLE_DEVICES=all, and NVIDIA's container runtime (its default configuration
#: accepts the variable from unprivileged containers) would give such a container every
#: GPU of the node, other pods' included. "void": the runtime acts as runc (no GPU, no
#: driver). A container that requests GPUs gets the device plugin's value instead.
NO_GPUS = {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}


def images(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The configured engine images by engine name (empty values left out)."""
    return {name: image for name, image in pairs if image}


def problems(spec: EvalRunSpec, configured: Mapping[str, str] | frozenset[str]) -> list[Problem]:
    """What an engine run must also say; ``configured``: the engines this operator has
    an image for."""
    engine = spec.model.engine
    if engine is None:
        return []
    found: list[Problem] = []
    if engine not in ENGINES:  # (the schema says so too: a stored object may predate it)
        return [Problem("spec.model.engine", f"unsupported engine {engine!r}; use vllm or sglang")]
    if engine not in configured:
        found.append(
            Problem(
                "spec.model.engine",
                f"this operator has no image for the {engine} engine (an admin sets "
                f"engines.{engine}.image in the chart: LMMS_ENGINE_IMAGE_{engine.upper()})",
            )
        )
    if spec.model.type != "openai":
        found.append(
            Problem(
                "spec.model.type",
                f"must be openai with an engine: the runner evaluates the {engine} server "
                f"through lmms-eval's OpenAI-compatible backend (got {spec.model.type!r})",
            )
        )
    if not spec.model.pretrained:
        found.append(
            Problem(
                "spec.model.pretrained", f"required with an engine: the checkpoint {engine} serves"
            )
        )
    if spec.resources.gpus < 1:
        found.append(Problem("spec.resources.gpus", "an engine needs at least one GPU"))
    if spec.resources.nodes > 1:
        found.append(
            Problem(
                "spec.resources.nodes",
                "an engine runs on one node (tensor parallel over the pod's GPUs); pipeline "
                "parallel across nodes is not supported",
            )
        )
    if spec.model.api_key is not None:
        found.append(
            Problem(
                "spec.model.apiKey",
                "not with an engine: the engine serves only its own pod and checks no key",
            )
        )
    if "base_url" in spec.model.args:
        found.append(
            Problem(
                "spec.model.args.base_url",
                "not with an engine: the runner talks to the engine in its own pod",
            )
        )
    return found


def command(spec: EvalRunSpec) -> list[str]:
    """The engine's server command: the checkpoint under its own name, on the pod's
    loopback, tensor parallel over the pod's GPUs."""
    model, gpus = str(spec.model.pretrained), str(spec.resources.gpus)
    if spec.model.engine == "sglang":
        argv = ["python3", "-m", "sglang.launch_server", "--model-path", model, "--tp", gpus]
    else:
        argv = ["vllm", "serve", model, "--tensor-parallel-size", gpus]
    argv += ["--host", HOST, "--port", str(PORT), "--served-model-name", model]
    if spec.model.revision:
        argv += ["--revision", spec.model.revision]
    return argv


def attach(
    pod_spec: dict[str, Any],
    spec: EvalRunSpec,
    configured: Sequence[tuple[str, str]],
    runner_resources: Sequence[tuple[str, str]] = RUNNER_RESOURCES,
) -> dict[str, Any]:
    """The pod template's spec with the engine sidecar, when the spec names an engine
    (``configured``: the operator's (engine, image) pairs; ``runner_resources``: the
    runner's own cpu and memory, its request and limit)."""
    if spec.model.engine is None:
        return pod_spec
    found = problems(spec, images(configured))
    if found:  # (checked at admission: a spec that got here has an image)
        raise InvalidSpec(found)
    image = images(configured)[spec.model.engine]
    runner = next(c for c in pod_spec["containers"] if c["name"] == "runner")
    resources = runner["resources"]
    own = dict(runner_resources)
    runner["resources"] = {"requests": dict(own), "limits": dict(own)}
    wait = min(WAIT_SECONDS, spec.timeout_seconds)
    runner["env"] = [
        *runner["env"],
        {"name": "LMMS_MODEL_URL", "value": URL},
        {"name": "LMMS_MODEL_WAIT_SECONDS", "value": str(wait)},
        dict(NO_GPUS),  # the engine holds the pod's GPUs; the runner requests none
    ]
    shared = {"hf-home", "tmp", "dshm"}
    carried = {"HF_HOME", "HOME", "TMPDIR", "HF_TOKEN"} | {v.name for v in spec.env}
    carried.discard(NO_GPUS["name"])  # the device plugin's, for the engine's GPUs
    engine = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": runner["imagePullPolicy"],
        "restartPolicy": "Always",
        "command": command(spec),
        "env": [e for e in runner["env"] if e["name"] in carried],
        "volumeMounts": [m for m in runner["volumeMounts"] if m["name"] in shared],
        "resources": resources,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": dict(runner["securityContext"]),
    }
    pod_spec["initContainers"] = [*pod_spec.get("initContainers", []), engine]
    return pod_spec


# -- what the engine's container status tells ------------------------------------------
def _status(pod: Mapping[str, Any], key: str, name: str) -> dict[str, Any]:
    for s in (pod.get("status") or {}).get(key) or []:
        if s.get("name") == name:
            return dict(s)
    return {}


def died(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """How the engine of ``pod`` ended while the runner still needed it (its
    ``terminated`` record), or None: it runs, or it was stopped with its pod (the runner
    finished, the pod is being deleted: a suspension, a preemption, a deadline)."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    engine = _status(pod, "initContainerStatuses", CONTAINER)
    runner = (_status(pod, "containerStatuses", "runner").get("state") or {}).get("terminated")
    if not engine or (runner is not None and runner.get("exitCode") == 0):
        return None
    term = (engine.get("state") or {}).get("terminated")
    if term and (runner is None or term.get("reason") == "OOMKilled" or _crashed(term)):
        return dict(term)
    last = (engine.get("lastState") or {}).get("terminated")
    return dict(last) if last else None


def _crashed(term: Mapping[str, Any]) -> bool:
    return term.get("exitCode") not in STOPPED


def redact(text: str) -> str:
    """The engine's output as the status may show it: credentials by their shapes and
    URL user-info masked, hidden characters escaped, the last lines only, bounded."""
    text = _USERINFO.sub(r"\1[REDACTED]@", masked(text))
    lines = escape_hidden(text.strip(), keep="\n").splitlines()[-MAX_LINES:]
    return "\n".join(lines)[-MAX_CHARS:]


def failure_message(engine: str, pod: str, term: Mapping[str, Any]) -> str:
    code, why = term.get("exitCode"), term.get("reason") or "Error"
    tail = redact(str(term.get("message") or ""))
    said = f"; its last lines:\n{tail}" if tail else " (it wrote no output)"
    return f"the {engine} engine (container {CONTAINER} of pod {pod}) exited with code {code} ({why}){said}"


def observed(
    spec: EvalRunSpec,
    ob: st.Observation,
    pods: Sequence[Mapping[str, Any]],
    now: dt.datetime,
    timeouts: st.Timeouts,
) -> st.Observation:
    """``ob`` for an engine run: Failed (EngineFailed) once its engine died in the newest
    pod, waiting on (or failed by) an engine image that cannot be pulled."""
    engine = spec.model.engine
    if engine is None or not pods or ob.phase in (R.SUCCEEDED, R.CANCELLED):
        return ob
    if ob.reason == R.DEADLINE_EXCEEDED:
        return ob
    pod = max(
        pods, key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"])
    )
    name = pod["metadata"]["name"]
    term = died(pod)
    if term is not None:
        done = ob.completion_time or fmt_time(now)
        return st.Observation(
            R.FAILED,
            R.ENGINE_FAILED,
            failure_message(engine, name, term),
            pod_name=name,
            start_time=ob.start_time,
            completion_time=done,
            stop_job=ob.phase != R.FAILED or ob.stop_job,
        )
    if ob.phase not in R.ACTIVE:
        return ob
    waiting = (_status(pod, "initContainerStatuses", CONTAINER).get("state") or {}).get("waiting")
    reason = (waiting or {}).get("reason") or ""
    if reason not in _PULL_FATAL and reason not in _PULL_RETRYING:
        return ob
    image = next(
        (
            c.get("image")
            for c in pod.get("spec", {}).get("initContainers") or []
            if c.get("name") == CONTAINER
        ),
        None,
    )
    message = f"cannot pull the {engine} engine image {image!r}: {reason}: {(waiting or {}).get('message', '')}".strip()
    created = parse_time(pod["metadata"].get("creationTimestamp")) or now
    if reason in _PULL_FATAL or (now - created).total_seconds() >= timeouts.image_pull:
        return st.Observation(
            R.FAILED,
            R.IMAGE_PULL_ERROR,
            message,
            pod_name=name,
            start_time=ob.start_time,
            completion_time=fmt_time(now),
            stop_job=True,
        )
    return st.Observation(
        R.PENDING, R.IMAGE_PULL_BACKOFF, message, pod_name=name, start_time=ob.start_time
    )


#: Runner phases before it has the server's answer.
_BEFORE_SERVED = (None, "starting", "loading")


def loading(spec: EvalRunSpec, ob: st.Observation, status: Mapping[str, Any]) -> st.Observation:
    """A running engine run whose runner still waits for the server: ``ModelLoading``."""
    if spec.model.engine is None or ob.phase != R.RUNNING or ob.reason != R.RUNNING or ob.passing:
        return ob
    if (status.get("progress") or {}).get("phase") not in _BEFORE_SERVED:
        return ob
    ob.reason = R.MODEL_LOADING
    ob.message = (
        f"pod {ob.pod_name} is running; the {spec.model.engine} engine is loading "
        f"{spec.model.pretrained} (the runner waits for it at {URL})"
    )
    return ob
