"""Checkpoints: round trip, newest-valid selection, corruption skipped, pruning, atomic writes, bad names."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.training.checkpoint import MAGIC, Checkpoint, CheckpointStore, decode, encode
from runtime.errors import CheckpointError


def ckpt(step: int, payload: bytes | None = None) -> Checkpoint:
    return Checkpoint(step=step, ledger=[[0, step * 10]], counters={"steps": step, "rows_duplicated": 0},
                      rng={"bit_generator": "PCG64", "state": {"state": step}},
                      payload=payload if payload is not None else b"model-%d" % step, meta={"origin": "fresh"})


def files_in(store: CheckpointStore) -> list[str]:
    return sorted(os.listdir(store.dir))


def ckpt_files(store: CheckpointStore) -> list[str]:
    return [f for f in files_in(store) if f.startswith("ckpt-")]


# --- encode / decode ----------------------------------------------------------------------------

def test_encode_decode_round_trip():
    original = ckpt(7, payload=bytes(range(256)) * 3)
    assert decode(encode(original)) == original


def test_empty_payload_round_trips():
    assert decode(encode(ckpt(1, payload=b""))).payload == b""


@pytest.mark.parametrize("blob", [b"", MAGIC, b"junk" * 20, b"HRCK2\n" + b"\0" * 64],
                         ids=["empty", "magic-only", "junk", "wrong-magic"])
def test_decode_refuses_non_checkpoints(blob):
    with pytest.raises(CheckpointError):
        decode(blob)


# --- the store ----------------------------------------------------------------------------------

def test_store_round_trip(tmp_path):
    store = CheckpointStore(str(tmp_path), "job-a")
    original = ckpt(12)
    path = store.save(original)
    assert Path(path).is_file() and Path(path).parent == tmp_path / "job-a"
    assert CheckpointStore(str(tmp_path), "job-a").latest() == original  # a fresh store reads it back


def test_latest_of_empty_store_is_none(tmp_path):
    assert CheckpointStore(str(tmp_path), "empty").latest() is None


def test_latest_picks_the_highest_step_not_the_last_written(tmp_path):
    store = CheckpointStore(str(tmp_path), "job", keep=10)
    for step in (5, 300, 40, 9, 1000, 2):
        store.save(ckpt(step))
    assert store.latest().step == 1000
    assert store.skipped == []


def test_jobs_do_not_see_each_other(tmp_path):
    CheckpointStore(str(tmp_path), "a").save(ckpt(99))
    assert CheckpointStore(str(tmp_path), "b").latest() is None


def _newest_path(store: CheckpointStore) -> str:
    return os.path.join(store.dir, ckpt_files(store)[-1])


@settings(max_examples=40, deadline=None)
@given(fraction=st.floats(0.0, 0.9999))
def test_torn_newest_is_skipped(tmp_path_factory, fraction):
    store = CheckpointStore(str(tmp_path_factory.mktemp("torn")), "job", keep=5)
    store.save(ckpt(1))
    store.save(ckpt(2, payload=b"x" * 500))
    newest = _newest_path(store)
    size = os.path.getsize(newest)
    with open(newest, "r+b") as fh:
        fh.truncate(int(size * fraction))
    assert store.latest() == ckpt(1)
    assert store.skipped == [newest]


@pytest.mark.parametrize("where", ["magic", "length", "header", "payload", "digest", "last"])
def test_flipped_byte_is_skipped(tmp_path, where):
    store = CheckpointStore(str(tmp_path), "job", keep=5)
    store.save(ckpt(1))
    store.save(ckpt(2, payload=b"p" * 100))
    newest = _newest_path(store)
    blob = bytearray(Path(newest).read_bytes())
    header_len = len(encode(ckpt(2, payload=b""))) - 32 - len(MAGIC) - 8
    offset = {"magic": 0, "length": len(MAGIC) + 7, "header": len(MAGIC) + 8 + header_len // 2,
              "payload": len(MAGIC) + 8 + header_len + 50, "digest": len(blob) - 20, "last": len(blob) - 1}[where]
    blob[offset] ^= 0x01
    Path(newest).write_bytes(bytes(blob))
    assert store.latest() == ckpt(1)
    assert store.skipped == [newest]


def test_all_corrupt_gives_none_and_lists_every_one(tmp_path):
    store = CheckpointStore(str(tmp_path), "job", keep=5)
    paths = [store.save(ckpt(s)) for s in (1, 2, 3)]
    for p in paths:
        Path(p).write_bytes(b"garbage")
    assert store.latest() is None
    assert sorted(store.skipped) == sorted(paths)


@pytest.mark.parametrize("keep, saves, expected_steps", [
    (1, [1, 2, 3], [3]),
    (3, [1, 2, 3, 4, 5], [3, 4, 5]),
    (2, [10, 5, 7], [7, 10]),
    (5, [1, 2], [1, 2]),
], ids=["keep-1", "keep-3", "out-of-order", "fewer-than-keep"])
def test_keep_prunes_to_the_newest_steps(tmp_path, keep, saves, expected_steps):
    store = CheckpointStore(str(tmp_path), "job", keep=keep)
    for step in saves:
        store.save(ckpt(step))
    kept = sorted(decode(Path(store.dir, f).read_bytes()).step for f in ckpt_files(store))
    assert kept == expected_steps
    assert store.latest().step == max(saves)


def test_no_temp_files_left_after_save(tmp_path):
    store = CheckpointStore(str(tmp_path), "job", keep=2)
    for step in range(6):
        store.save(ckpt(step))
    assert all(f.startswith("ckpt-") and f.endswith(".hrc") for f in files_in(store))
    assert len(files_in(store)) == 2


def test_clear_removes_checkpoints(tmp_path):
    store = CheckpointStore(str(tmp_path), "job")
    store.save(ckpt(1))
    store.save(ckpt(2))
    store.clear()
    assert store.latest() is None and ckpt_files(store) == []


def test_file_uri_storage(tmp_path):
    store = CheckpointStore(f"file://{tmp_path}", "uri-job")
    store.save(ckpt(3))
    assert CheckpointStore(str(tmp_path), "uri-job").latest() == ckpt(3)


@pytest.mark.parametrize("job", ["a/b", "../escape", "..", ".", "", "a\\b", "/abs"],
                         ids=["slash", "dotdot-slash", "dotdot", "dot", "empty", "backslash", "absolute"])
def test_unsafe_job_name_is_refused(tmp_path, job):
    with pytest.raises(CheckpointError) as info:
        CheckpointStore(str(tmp_path / "store"), job)
    assert info.value.fix
    assert not (tmp_path / "store").exists()  # refused before creating anything


# --- write failures -----------------------------------------------------------------------------

def test_storage_under_a_file_is_a_checkpoint_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("I am a file")
    with pytest.raises(CheckpointError) as info:
        CheckpointStore(str(blocker / "ckpts"), "job")
    assert "fix:" in str(info.value) and "writable" in info.value.fix


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    """The job folder turns into a file under the store (the root-proof stand-in for a read-only folder)."""
    store = CheckpointStore(str(tmp_path), "job")
    store.save(ckpt(1))
    job_dir = Path(store.dir)
    moved = tmp_path / "job.moved"
    job_dir.rename(moved)
    job_dir.write_text("a file where the folder was")
    try:
        with pytest.raises(CheckpointError) as info:
            store.save(ckpt(2))
        assert "fix:" in str(info.value) and "previous checkpoint is intact" in info.value.fix
    finally:
        job_dir.unlink()
        moved.rename(job_dir)
    assert store.latest() == ckpt(1)
    assert files_in(store) == ckpt_files(store)


def test_save_failing_mid_write_leaves_no_temp_file(tmp_path):
    """A file-size limit makes the write itself fail part-way (EFBIG), like a full disk."""
    store = CheckpointStore(str(tmp_path), "job")
    store.save(ckpt(1))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, hard))  # Python ignores SIGXFSZ, so write() raises
    try:
        with pytest.raises(CheckpointError) as info:
            store.save(ckpt(2, payload=b"z" * 100_000))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert "fix:" in str(info.value)
    assert files_in(store) == ckpt_files(store) and len(ckpt_files(store)) == 1
    assert store.latest() == ckpt(1)


# --- bugs ---------------------------------------------------------------------------------------

def test_save_never_prunes_the_checkpoint_it_just_wrote(tmp_path):
    store = CheckpointStore(str(tmp_path), "job", keep=1)
    Path(store.save(ckpt(20))).write_bytes(b"torn")  # the newest is corrupt: a restart begins fresh
    assert store.latest() is None
    store.save(ckpt(5))  # progress after the restart
    assert store.latest() == ckpt(5)


def test_temporaries_of_dead_writers_are_swept_and_live_ones_kept(tmp_path):
    """A writer killed between write and rename leaves ``.tmp-<host>.<pid>.<hex>``: the next store removes
    it when the pid is dead on this host, or when it is an hour old from elsewhere; a live writer's stays."""
    import socket
    import subprocess
    import sys
    import time

    from runtime.training.checkpoint import STALE_TMP_S

    store = CheckpointStore(str(tmp_path), "job")
    store.save(ckpt(5))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    names = {
        "dead": f".tmp-{host}.{int(dead.stdout)}.aa",  # its writer exited: stale
        "mine": f".tmp-{host}.{os.getpid()}.bb",  # this process may be writing it: kept
        "alive": f".tmp-{host}.{os.getppid()}.cc",  # a live process: kept
        "elsewhere-old": ".tmp-other-host.42.dd",  # cannot check the pid: stale after an hour
        "elsewhere-new": ".tmp-other-host.43.ee",
        "unnamed-new": ".tmp-deadbeef",  # an older naming scheme: by age only
    }
    for name in names.values():
        (Path(store.dir) / name).write_bytes(b"partial")
    old = time.time() - STALE_TMP_S - 60
    os.utime(Path(store.dir) / names["elsewhere-old"], (old, old))

    again = CheckpointStore(str(tmp_path), "job")
    swept = sorted(os.path.basename(p) for p in again.swept)
    assert swept == sorted([names["dead"], names["elsewhere-old"]])
    left = {n for n in os.listdir(store.dir) if n.startswith(".tmp-")}
    assert left == {names["mine"], names["alive"], names["elsewhere-new"], names["unnamed-new"]}
    assert again.latest().step == 5  # the checkpoints themselves untouched
