"""One running job per run directory: refused while another process holds it, free again once that process is
killed (the kernel drops the lock), and never claimed by a launcher's other ranks."""

from __future__ import annotations

import signal

import pytest
from kill_points import hold_run_dir

from regenesis_pl.run_lock import RunDirInUse, claimed


def test_a_held_directory_is_refused_and_free_again_after_sigkill(tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    holder = hold_run_dir(tmp_path / "run")
    try:
        refused = rf"in use by another running job \(process {holder.pid}\)"
        with pytest.raises(RunDirInUse, match=refused), claimed(tmp_path / "run"):
            pass
        assert isinstance(RunDirInUse("x"), OSError)  # the commands turn an OSError into one line and exit 2
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with claimed(tmp_path / "run") as root:  # no cleanup ran in the killed process, yet the lock is gone
        assert (root / ".in-use").read_text().strip().isdigit()
    assert (tmp_path / "run" / ".in-use").read_text() == ""


def test_other_ranks_of_the_same_job_share_the_directory(tmp_path, monkeypatch):
    holder = hold_run_dir(tmp_path / "run")
    try:
        monkeypatch.setenv("LOCAL_RANK", "1")
        with claimed(tmp_path / "run"):
            pass
        monkeypatch.setenv("LOCAL_RANK", "0")
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(RunDirInUse), claimed(tmp_path / "run"):
            pass
    finally:
        holder.kill()
        holder.wait()
