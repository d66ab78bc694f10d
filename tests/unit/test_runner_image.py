"""The Dockerfile and the Job agree: every path and command they refer to exists.

No container runtime exists here, so the image is checked by reading it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from lmms_operator.config import Settings
from lmms_operator.reconcile import job as jobs

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "runner-image" / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def final_stage() -> str:
    """What the image holds: its runtime stage and the last stage (not the build stage,
    whose compilers stay out)."""
    stages = DOCKERFILE.split("\nFROM ")
    runtime = next(s for s in stages if s.startswith("${CUDA_BASE} AS runtime\n"))
    assert stages[-1].startswith("runtime\n")
    return runtime + stages[-1]


def test_the_user_at_uid_1000_is_reused_when_the_base_holds_one() -> None:
    # Ubuntu 24.04 (the default base) holds `ubuntu` at 1000:1000, where `groupadd --gid
    # 1000` fails: an existing group and user are renamed and reset instead.
    # (`images.sh user-check` builds the stage on bases with and without one.)
    stage = final_stage()
    assert 'group="$(getent group 1000 | cut -d: -f1)"' in stage
    assert 'groupmod --new-name lmms "$group"' in stage
    assert 'usermod --login lmms "$user"' in stage
    assert "usermod --gid 1000 --groups ''" in stage
    assert re.search(r"if \[ -z \"\$group\" \]; then groupadd --gid 1000 lmms", stage)
    assert "user-check" in (REPO / "tests" / "infra" / "lmms_devcluster" / "images.sh").read_text()


def test_entrypoint_is_the_runner_command() -> None:
    assert 'ENTRYPOINT ["lmms-runner"]' in final_stage()
    assert PYPROJECT["project"]["scripts"]["lmms-runner"] == "lmms_runner.main:main"
    assert Settings().runner_command == ("lmms-runner",)


def test_non_root_user_matches_the_job() -> None:
    user = re.search(r"^USER (\d+):(\d+)$", final_stage(), re.M)
    assert user is not None
    assert int(user.group(1)) == int(user.group(2)) == Settings().runner_uid != 0


def test_paths_the_job_mounts_exist_in_the_image() -> None:
    stage = final_stage()
    for path in (jobs.CONFIG_DIR, jobs.TASKS_DIR, jobs.HF_HOME, jobs.OUTPUT_DIR):
        assert path in stage, f"{path} is not created in the image"
    assert f"LMMS_RUN_CONFIG={jobs.CONFIG_FILE}" in stage
    assert f"HF_HOME={jobs.HF_HOME}" in stage
    volume = re.search(r"^VOLUME \[(.*)\]$", stage, re.M)
    assert volume is not None and '"/tmp"' in volume.group(1)  # read-only root filesystem


def test_versions_come_from_the_lock_and_no_compiler_ships() -> None:
    # Every package from the hash-pinned lock; the project itself resolves nothing.
    assert "--require-hashes -r /opt/lmms/lock/runner.txt" in DOCKERFILE
    assert "pip install --no-deps --no-index" in DOCKERFILE  # the project's own wheel
    assert "LMMS_LOCK_FILE=/opt/lmms/lock/runner.txt" in final_stage()
    for name in ("runner.txt", "runner-py311.txt"):
        lock = (REPO / "requirements" / name).read_text()
        assert "\nlmms-eval==0.7.3 " in lock and re.search(r"\nfilelock==3\.", lock)
        assert re.search(r"\ntorch==[\d.]+ ", lock) and re.search(r"\ntorchvision==[\d.]+ ", lock)
    assert "build-essential" not in final_stage()
    runner_extra = PYPROJECT["project"]["optional-dependencies"]["runner"]
    assert "lmms-eval==0.7.3" in runner_extra and "filelock<4" in runner_extra


def test_the_base_and_the_lock_are_build_arguments() -> None:
    # The public CUDA base for users; make images passes a Debian bookworm base made from
    # Debian packages, with the lock for its Python (3.11).
    assert re.search(r"^ARG CUDA_BASE=nvidia/cuda:\S+-ubuntu24\.04$", DOCKERFILE, re.M)
    assert re.search(r"^ARG RUNNER_LOCK=requirements/runner\.txt$", DOCKERFILE, re.M)
    script = (REPO / "tests" / "infra" / "lmms_devcluster" / "images.sh").read_text()
    assert "--build-arg CUDA_BASE=" in script
    assert "--build-arg RUNNER_LOCK=requirements/runner-py311.txt" in script


def test_copied_sources_exist() -> None:
    defaults = dict(re.findall(r"^ARG (\w+)=(\S+)$", DOCKERFILE, re.M))
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                src = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], src)
                assert (REPO / src).exists(), src


def test_the_task_index_is_built_into_the_image_where_the_runner_reads_it() -> None:
    stage = final_stage()
    assert "python -m lmms_runner.patches.taskindex /opt/lmms/task-index.json" in stage
    assert "LMMS_TASK_INDEX=/opt/lmms/task-index.json" in stage
    # transformers' index of its model modules, the same way.
    assert (
        "python -m lmms_runner.patches.transformersindex /opt/lmms/transformers-index.json" in stage
    )
    assert "LMMS_TRANSFORMERS_INDEX=/opt/lmms/transformers-index.json" in stage
    # And lmms-eval's table of Unicode punctuation.
    assert "python -m lmms_runner.patches.punctuation /opt/lmms/punctuation.json" in stage
    assert "LMMS_PUNCTUATION_INDEX=/opt/lmms/punctuation.json" in stage
    # And the compiled methods of the dataclasses a start makes.
    assert "python -m lmms_runner.startup /opt/lmms/code-cache.marshal" in stage
    assert "LMMS_CODE_CACHE=/opt/lmms/code-cache.marshal" in stage


def test_nvidias_runtime_leaves_the_driver_check_to_the_runner() -> None:
    # The base's NVIDIA_REQUIRE_CUDA names the base's CUDA, not torch's: the container
    # starts on any driver and the runner fails DriverTooOld with both versions.
    assert "NVIDIA_DISABLE_REQUIRE=1" in final_stage()
