"""Atomic, checksummed checkpoints on a local path or any ``pyarrow.fs`` URI.

One file per checkpoint: ``MAGIC | header length | header JSON | payload | sha256 of all before``.
The header holds the step, the ledger of consumed rows, counters and RNG state; the payload is the
model state (the trainer's bytes). Writing goes to a temporary name, is flushed and fsynced, then
renamed into place, so a crash at any instant leaves either the old set of checkpoints or the new one;
a torn or corrupt file fails its checksum and :meth:`CheckpointStore.latest` skips it. A writer killed
between the write and the rename leaves its temporary file behind: the next store opened on the folder
removes it (its name carries the writer's host and pid; one from another host goes after an hour).

>>> import tempfile
>>> store = CheckpointStore(tempfile.mkdtemp(), "my-job")
>>> path = store.save(Checkpoint(step=10, ledger=[[0, 2560]], counters={}, rng={}, payload=b"..."))
>>> store.latest().step, store.latest().ledger
(10, [[0, 2560]])
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from runtime.errors import CheckpointError
from runtime.loopback import process_alive
from runtime.training.ingest import resolve_fs

MAGIC = b"HRCK1\n"
_LEN = struct.Struct(">Q")
_DIGEST_BYTES = 32
_TMP = ".tmp-"
STALE_TMP_S = 3600.0  # a temporary file whose writer cannot be checked (another host) is stale after this


@dataclass(frozen=True)
class Checkpoint:
    step: int
    ledger: list  # consumed row positions as [[start, end), ...]
    counters: dict[str, Any]
    rng: dict[str, Any]
    payload: bytes  # model (and optimizer) state, as the trainer serialized it
    meta: dict[str, Any] = field(default_factory=dict)  # origin (warm start), framework, ...


def encode(ckpt: Checkpoint) -> bytes:
    header = json.dumps({"step": ckpt.step, "ledger": ckpt.ledger, "counters": ckpt.counters,
                         "rng": ckpt.rng, "meta": ckpt.meta}, sort_keys=True).encode()
    body = MAGIC + _LEN.pack(len(header)) + header + ckpt.payload
    return body + hashlib.sha256(body).digest()


def decode(blob: bytes, *, where: str = "checkpoint") -> Checkpoint:
    """Parse and verify; raises :class:`CheckpointError` for a torn, truncated or altered file."""
    if len(blob) < len(MAGIC) + _LEN.size + _DIGEST_BYTES or not blob.startswith(MAGIC):
        raise CheckpointError("not a checkpoint (bad magic or truncated)", where=where)
    body, digest = blob[:-_DIGEST_BYTES], blob[-_DIGEST_BYTES:]
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError("checksum mismatch (torn or altered file)", where=where)
    (hlen,) = _LEN.unpack_from(body, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    header = json.loads(body[start:start + hlen])
    return Checkpoint(step=header["step"], ledger=header["ledger"], counters=header["counters"],
                      rng=header["rng"], payload=body[start + hlen:], meta=header.get("meta", {}))


class CheckpointStore:
    """The checkpoints of one job under ``<storage>/<job>/``, newest first by step."""

    def __init__(self, storage: str, job: str, *, keep: int = 3):
        if not job or "/" in job or job in (".", "..") or "\\" in job:
            raise CheckpointError(f"job name {job!r} cannot be used as a folder", where="checkpoint",
                                  fix="use letters, digits, '_', '.' or '-'")
        self.fs, root = resolve_fs(storage)
        self.dir = f"{root.rstrip('/')}/{job}"
        self.keep = keep
        self.skipped: list[str] = []  # corrupt files met by latest(), for the summary
        self._local = isinstance(self.fs, pafs.LocalFileSystem)
        try:
            self.fs.create_dir(self.dir, recursive=True)
        except OSError as exc:
            raise CheckpointError(f"cannot create checkpoint folder ({exc})", where=self.dir,
                                  fix="check checkpoint.storage exists and is writable") from None
        self.swept = self._sweep_stale_temporaries()  # left by writers killed between write and rename

    def _sweep_stale_temporaries(self) -> list[str]:
        """Remove temporary files whose writer is gone: on this host, a dead pid; elsewhere, older
        than :data:`STALE_TMP_S`. A live writer's file (this process's included) is never touched."""
        host, removed = socket.gethostname(), []
        infos = self.fs.get_file_info(pafs.FileSelector(self.dir, allow_not_found=True))
        for info in infos:
            if not info.base_name.startswith(_TMP) or info.type != pafs.FileType.File:
                continue
            writer_host, pid = _writer(info.base_name)
            if writer_host == host and pid is not None:
                stale = pid != os.getpid() and not process_alive(pid)
            else:
                mtime = info.mtime.timestamp() if info.mtime is not None else time.time()
                stale = time.time() - mtime > STALE_TMP_S
            if stale:
                _remove_quietly(self.fs, info.path)
                removed.append(info.path)
        return removed

    def _names(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.dir, allow_not_found=True))
        return sorted((i.path for i in infos if i.base_name.startswith("ckpt-") and i.base_name.endswith(".hrc")),
                      reverse=True)

    def save(self, ckpt: Checkpoint) -> str:
        """Write atomically and prune to the newest ``keep``; returns the final path."""
        final = f"{self.dir}/ckpt-{ckpt.step:012d}-{uuid.uuid4().hex[:8]}.hrc"
        tmp = f"{self.dir}/{_TMP}{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex}"
        blob = encode(ckpt)
        try:
            if self._local:
                _write_local_durably(tmp, final, blob)
            else:  # object stores: a PUT is atomic, the move is a server-side copy
                with self.fs.open_output_stream(tmp) as out:
                    out.write(blob)
                self.fs.move(tmp, final)
        except OSError as exc:
            _remove_quietly(self.fs, tmp)
            raise CheckpointError(f"cannot write checkpoint ({exc})", where=self.dir,
                                  fix="free space or fix permissions on checkpoint.storage; the previous checkpoint is intact") from None
        # Never prune the file just written, whatever names sort above it (e.g. corrupt higher steps).
        for old in [n for n in self._names() if n != final][self.keep - 1:]:
            _remove_quietly(self.fs, old)
        return final

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies, or ``None`` when there is none."""
        for name in self._names():
            try:
                with self.fs.open_input_file(name) as fh:
                    return decode(fh.read(), where=name)
            except (CheckpointError, OSError, ValueError, KeyError):
                if name not in self.skipped:
                    self.skipped.append(name)
        return None

    def clear(self) -> None:
        for name in self._names():
            _remove_quietly(self.fs, name)


def atomic_write_bytes(path: str | os.PathLike, blob: bytes, *, mode: int = 0o644) -> Path:
    """Write a local file whole or not at all: a temporary name beside it, fsync, rename, fsync the
    folder -- the checkpoints' own way, for every result file a command writes (plan, summary, runbook).

    >>> atomic_write_bytes("/tmp/x.json", b"{}")  # doctest: +SKIP
    """
    final = Path(path).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _write_local_durably(str(tmp), str(final), blob, mode=mode)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def atomic_write_text(path: str | os.PathLike, text: str, *, mode: int = 0o644) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def _write_local_durably(tmp: str, final: str, blob: bytes, *, mode: int = 0o600) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(blob)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    dir_fd = os.open(os.path.dirname(final), os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _writer(name: str) -> tuple[str | None, int | None]:
    """``(host, pid)`` from a temporary file's name ``.tmp-<host>.<pid>.<hex>``; ``(None, None)`` otherwise."""
    parts = name[len(_TMP):].rsplit(".", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        return None, None
    return parts[0], int(parts[1])


def _remove_quietly(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_file(path)
    except OSError:
        pass
