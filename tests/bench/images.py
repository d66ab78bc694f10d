"""Benchmark: the two images (size, layers, cold and warm build) and the runner's
start-up inside its image against the same command in the virtualenv.

The start-up run is a small evaluation, where start-up is nearly all of the time: the
same `lmms-runner` command line on a 10-document local task against an instant loopback
model, once as the process executor runs a pod from the runner image (an overlay over
the image's root filesystem, chroot, uid 1000, read-only root, the volumes bind-mounted)
and once with the virtualenv's Python, alternately, ``--repeats`` times each. Writes the
figures to docs/benchmarks.md ("Images").

    python tests/bench/images.py [--repeats 3]      # after make images; as root
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from lmms_devcluster.imagestore import ImageStore  # noqa: E402
from tests.bench.docs import write_section  # noqa: E402
from tests.bench.runner_overhead import run  # noqa: E402
from tests.fixtures import colortask  # noqa: E402

SECTION = "## Images"
SCRIPT = REPO / "tests" / "infra" / "lmms_devcluster" / "images.sh"
CACHE = Path(os.environ.get("LMMS_CACHE_DIR") or Path.home() / ".cache" / "lmms-operator")
B = ["buildah", "--storage-driver", "vfs"]


def build_all() -> tuple[dict[str, str], float]:
    """Runs `make images`' script (warm when the images exist) and times it."""
    start = time.monotonic()
    out = subprocess.run(["bash", str(SCRIPT), "all"], capture_output=True, text=True, check=True)
    return dict(line.split() for line in out.stdout.splitlines()), time.monotonic() - start


def describe(image: str) -> tuple[str, int]:
    """Size (as buildah counts it) and number of layers."""
    inspected = json.loads(
        subprocess.run(
            [*B, "inspect", "--type", "image", image], capture_output=True, text=True, check=True
        ).stdout
    )
    layers = len(inspected["OCIv1"]["rootfs"]["diff_ids"])
    size = subprocess.run(
        [*B, "images", "--format", "{{.Size}}", image], capture_output=True, text=True, check=True
    ).stdout.split("\n")[0]
    return size, layers


def cold_build(name: str, tag: str) -> str:
    """The recorded duration of the build that made this tag (images.sh writes it)."""
    path = CACHE / "images" / "build-times.tsv"
    rows = [line.split("\t") for line in path.read_text().splitlines()] if path.exists() else []
    found = [r for r in rows if r[:2] == [name, tag]]
    return f"{found[-1][2]} s ({found[-1][3]})" if found else "not recorded"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the image run needs mount namespaces and chroot")
    tags, warm = build_all()
    images = {name: f"localhost/{name}:{tag}" for name, tag in tags.items()}
    store = ImageStore()
    runner_image = store.lookup(images["lmms-operator-runner"])
    rootfs = store.rootfs(runner_image)

    tmp = Path(tempfile.mkdtemp(prefix="lmms-bench-images-"))
    colortask.write(tmp / "tasks", "colors", samples=args.samples)
    server = subprocess.Popen(
        [sys.executable, str(REPO / "tests/fixtures/openai_server.py"), "--delay", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    url = f"http://127.0.0.1:{json.loads(server.stdout.readline())['port']}/v1"
    margs = {"model_version": "local", "base_url": url, "api_key": "sk-bench"}
    config = tmp / "evalrun.json"
    config.write_text(
        json.dumps(
            {
                "kind": "EvalRun",
                "metadata": {"name": "bench"},
                "spec": {"model": {"type": "openai", "args": margs}, "tasks": ["colors"]},
            }
        )
    )

    def argv(i: int) -> list[str]:
        # The same paths in both: the image run sees these directories at their own paths
        # (the task's YAML names its data directory).
        return [
            "lmms-runner",
            "--config",
            f"{tmp}/config/evalrun.json",
            "--include-path",
            f"{tmp}/tasks",
            "--output",
            f"{tmp}/out/{i}",
            "--listen",
            "127.0.0.1:0",
            "--hold-timeout",
            "0",
            "--termination-log",
            f"{tmp}/out/term",
        ]

    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    (tmp / "config").mkdir()
    shutil.copy(config, tmp / "config" / "evalrun.json")
    for d in ("out", "hf", "scratch"):
        (tmp / d).mkdir()
        (tmp / d).chmod(0o777)
    times: dict[str, list[float]] = {"image": [], "venv": []}
    try:
        for i in range(args.repeats):
            plan = {
                "argv": argv(i),
                "env": {
                    **dict(e.split("=", 1) for e in runner_image.env),
                    **offline,
                    "HF_HOME": str(tmp / "hf"),
                },
                "mounts": [
                    {"source": str(tmp / "scratch"), "target": "/tmp", "readOnly": False},
                    *(
                        {"source": str(tmp / d), "target": str(tmp / d), "readOnly": ro}
                        for d, ro in (("config", True), ("tasks", True), ("out", False))
                    ),
                    {"source": str(tmp / "hf"), "target": str(tmp / "hf"), "readOnly": False},
                ],
                "workingDir": "/",
                "hostname": "bench",
                "image": {
                    "rootfs": str(rootfs),
                    "dir": str(tmp / "container"),
                    "readOnlyRoot": True,
                    "uid": 1000,
                    "gid": 1000,
                    "groups": [1000],
                },
            }
            plan_file = tmp / "plan.json"
            plan_file.write_text(json.dumps(plan))
            launch = [sys.executable, "-m", "lmms_devcluster.launch", str(plan_file)]
            unshare = ["unshare", "--mount", "--uts", "--propagation", "private"]
            times["image"].append(run([*unshare, *launch], dict(os.environ)))
            venv_argv = argv(100 + i)
            venv_argv[0] = str(Path(sys.executable).with_name("lmms-runner"))
            env = dict(os.environ, **offline, HF_HOME=str(tmp / "hf"))
            times["venv"].append(run(venv_argv, env))
            print(
                f"round {i + 1}: image {times['image'][-1]:.1f}s, venv {times['venv'][-1]:.1f}s",
                flush=True,
            )
    finally:
        server.terminate()
    image_s, venv_s = statistics.median(times["image"]), statistics.median(times["venv"])
    rows = []
    for name, image in images.items():
        size, layers = describe(image)
        rows.append(f"| `{name}` | {size} | {layers} | {cold_build(name, tags[name])} |")
    text = (
        f"{SECTION}\n\n"
        f"`python tests/bench/images.py --repeats {args.repeats}` on {os.cpu_count()} CPU "
        f"cores, {time.strftime('%Y-%m-%d')}. `make images` "
        "(`tests/infra/lmms_devcluster/images.sh`) builds both Dockerfiles with buildah 1.28 "
        "(vfs storage, chroot isolation, one layer per stage) on a base made by `mmdebstrap "
        "--variant=minbase bookworm` (python3, python3-venv, ca-certificates, passwd: 225 MB, "
        "about 30 s, cached as a tarball), every package from its lock with hashes "
        "(`requirements/operator.txt`, `requirements/runner-py311.txt`: torch with its CUDA "
        "libraries from the package index, as on a GPU node).\n\n"
        "| image | size | layers | cold build (recorded by images.sh) |\n"
        "|---|---:|---:|---:|\n" + "\n".join(rows) + "\n\n"
        f"Warm (both images up to date, the tag is the hash of their inputs): "
        f"**{warm:.2f} s**. A change to the sources builds the image again from its "
        "Dockerfile (pip's downloads come from buildah's cache mount).\n\n"
        f"**Runner start-up, image against virtualenv.** The same `lmms-runner` command "
        f"({args.samples} documents of a local task, an instant loopback model, so that "
        "start-up is nearly all of the time), from the runner image as the executor runs a "
        "pod (overlay root filesystem, chroot, uid 1000, read-only root) and with the "
        "virtualenv's Python, alternately:\n\n"
        "| | median wall time | runs |\n|---|---:|---|\n"
        f"| in the runner image | {image_s:.1f} s | "
        f"{', '.join(f'{t:.1f}' for t in times['image'])} |\n"
        f"| in the virtualenv | {venv_s:.1f} s | "
        f"{', '.join(f'{t:.1f}' for t in times['venv'])} |\n\n"
        f"Ratio image / virtualenv: **{image_s / venv_s:.2f}**.\n"
    )
    write_section(SECTION, text)
    print(text)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
