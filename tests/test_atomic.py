"""Atomic writes and the clean-up of temporary files an interrupted write left behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ndkd.atomic import atomic_write, remove_stale_temp_files


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "last.pt"
    atomic_write(target, lambda tmp: tmp.write_text("one"))
    atomic_write(target, lambda tmp: tmp.write_text("two"))
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.pt"]


def test_failed_write_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "last.pt"
    target.write_text("old")

    def fail(tmp):
        tmp.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, fail)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_remove_stale_temp_files_only_touches_those_patterns(tmp_path):
    stale = [".last.pt.k3j_x9ab.tmp", ".metrics.jsonl.a1b2c3d4.tmp", ".last.pt.zz.tmp"]
    kept = [
        "last.pt",
        "best.pt",
        ".best.pt.abcd1234.tmp",  # a target not asked for
        ".last.pt.bak.abcd1234.tmp",  # temp of "last.pt.bak", not of "last.pt"
        ".last.pt.abcd1234.tmp.keep",
        "last.pt.abcd1234.tmp",  # no leading dot
        ".last.pt..tmp",
        "notes.txt",
        ".lock",
    ]
    for name in stale + kept:
        (tmp_path / name).write_text(name)
    (tmp_path / ".metrics.jsonl.dir0.tmp").mkdir()  # not a file: left alone
    removed = remove_stale_temp_files(tmp_path, ["last.pt", "metrics.jsonl", "config.yaml"])
    assert sorted(p.name for p in removed) == sorted(stale)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([*kept, ".metrics.jsonl.dir0.tmp"])


def test_remove_stale_temp_files_of_a_killed_atomic_write(tmp_path):
    target = tmp_path / "last.pt"
    target.write_text("epoch 1")
    killed = (
        "import os, sys\n"
        "from ndkd.atomic import atomic_write\n"
        "atomic_write(sys.argv[1], lambda tmp: (tmp.write_text('half'), os._exit(9)))\n"
    )
    child = subprocess.run([sys.executable, "-c", killed, str(target)], check=False)
    assert child.returncode == 9
    (orphan,) = tmp_path.glob(".last.pt.*.tmp")
    assert remove_stale_temp_files(tmp_path, iter(["last.pt"])) == [orphan]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert target.read_text() == "epoch 1"


def test_remove_stale_temp_files_missing_folder_or_no_names(tmp_path):
    assert remove_stale_temp_files(tmp_path / "absent", ["last.pt"]) == []
    (tmp_path / ".last.pt.abc.tmp").write_text("x")
    assert remove_stale_temp_files(tmp_path, []) == []
    assert (tmp_path / ".last.pt.abc.tmp").exists()
