"""How the executor merges a pod's container with its image, as a kubelet does."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmms_devcluster.imagestore import Image, _candidates, command_line, resolve_user

IMAGE = Image(
    reference="localhost/lmms-operator:0.1.0",
    id="f" * 64,
    digest="sha256:" + "a" * 64,
    entrypoint=["lmms-operator"],
    cmd=["run"],
    env=["PATH=/opt/lmms/bin:/usr/bin"],
    user="1000:1000",
)


def test_command_replaces_the_entrypoint_and_drops_the_cmd() -> None:
    assert command_line(IMAGE, ["python", "-c", "x"], None) == ["python", "-c", "x"]
    assert command_line(IMAGE, ["python"], ["-V"]) == ["python", "-V"]


def test_args_alone_replace_the_cmd_and_keep_the_entrypoint() -> None:
    assert command_line(IMAGE, None, ["--help"]) == ["lmms-operator", "--help"]
    assert command_line(IMAGE, None, None) == ["lmms-operator", "run"]
    assert command_line(IMAGE, [], []) == ["lmms-operator", "run"]


def test_image_id_is_the_repository_at_the_manifest_digest() -> None:
    assert IMAGE.image_id == "localhost/lmms-operator@sha256:" + "a" * 64


def test_short_names_are_looked_up_under_localhost() -> None:
    assert _candidates("lmms-operator:0.1.0") == [
        "lmms-operator:0.1.0",
        "localhost/lmms-operator:0.1.0",
    ]
    assert _candidates("registry.example/team/runner:1") == ["registry.example/team/runner:1"]
    assert "localhost/runner:latest" in _candidates("runner")


def test_the_image_user_is_resolved_in_the_images_own_files(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nlmms:x:1000:1001::/nonexistent:/usr/sbin/nologin\n"
    )
    (tmp_path / "etc" / "group").write_text("root:x:0:\nlmms:x:1001:\nvideo:x:44:\n")
    assert resolve_user("", tmp_path) == (0, 0)
    assert resolve_user("1000:1000", tmp_path) == (1000, 1000)
    assert resolve_user("lmms", tmp_path) == (1000, 1001)
    assert resolve_user("1000", tmp_path) == (1000, 1001)  # its passwd entry's group
    assert resolve_user("lmms:video", tmp_path) == (1000, 44)
    assert resolve_user("4242", tmp_path) == (4242, 4242)
    with pytest.raises(ValueError, match="unable to find user nobody"):
        resolve_user("nobody", tmp_path)
    with pytest.raises(ValueError, match="unable to find group staff"):
        resolve_user("lmms:staff", tmp_path)


def test_mount_targets_resolve_symlinks_inside_the_image(tmp_path: Path) -> None:
    from lmms_devcluster.launch import in_root

    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")  # absolute: the image's /run, not the node's
    (root / "etc").mkdir()
    (root / "etc" / "up").symlink_to("../../..")
    assert in_root(str(root), "/var/run/secrets/x") == f"{root}/run/secrets/x"
    assert in_root(str(root), "/etc/up/escape") == f"{root}/escape"  # never above the root
    assert in_root("", "/var/run") == "/var/run"
