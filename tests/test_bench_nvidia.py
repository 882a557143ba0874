"""Tests of the NVIDIA comparison's own logic (bench/bench_nvidia.py) that run without their
code: which commit of their checkout a report names."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests._scripts import load_script

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(*args, cwd):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(cwd), "PATH": "/usr/bin:/bin"})


def test_the_commit_is_their_checkouts_never_an_enclosing_repositorys(tmp_path):
    bench = load_script("bench/bench_nvidia.py")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    _git("init", "-q", cwd=theirs)
    (theirs / "a.py").write_text("x = 1\n")
    _git("add", "a.py", cwd=theirs)
    _git("commit", "-q", "-m", "c", cwd=theirs)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=theirs, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert bench.git_commit(theirs) == head
    # a copy of their code inside another repository (ours): not that repository's commit
    copy = theirs / ".nvidia"
    copy.mkdir()
    assert bench.git_commit(copy).startswith("unknown")
    (copy / "COMMIT").write_text("0123abc\n")  # what scripts/gpu_prepare.sh writes
    assert bench.git_commit(copy) == "0123abc"
    plain = tmp_path / "plain"
    plain.mkdir()
    assert bench.git_commit(plain).startswith("unknown")
