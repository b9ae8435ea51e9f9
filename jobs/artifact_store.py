"""The artifact store: one job's input and outputs as objects of the object store
(:mod:`jobs.objects`: a local directory by default, an S3 bucket with ``EXPLAINER_STORE_URL``),
named ``<job id>/input.bin`` and ``<job id>/outputs/<name>``.

The worker writes a job's outputs into a local staging folder (``<root>/<job id>/.staging-*``)
and publishes them once they are complete: each file becomes one whole object, ``summary.json``
last, so no partial artifact is ever visible and the record says 'succeeded' only afterwards.
A job's PNG pictures are not drawn by the worker: it publishes what they are drawn from
(``engine.artifacts.PICTURE_SOURCES``, a hidden object), and the first request of a picture
draws them all and stores them beside the other outputs (:meth:`ArtifactStore.draw_pictures`).
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import shutil
import threading
import time
import weakref
import zipfile
from collections.abc import Iterator
from pathlib import Path

from engine.artifacts import PICTURE_SOURCES, render_pictures
from jobs.objects import LocalObjects, ObjectMissing, ObjectStore, StoreUnavailable

log = logging.getLogger(__name__)

MEDIA_TYPES = {".npy": "application/octet-stream", ".npz": "application/octet-stream",
               ".png": "image/png", ".json": "application/json",
               ".csv": "text/csv; charset=utf-8", ".md": "text/markdown; charset=utf-8",
               ".zip": "application/zip"}  # fmt: skip
NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
JOB_ID = re.compile(r"[0-9a-f]{32}")  # jobs.records.new_job_id
SUMMARY = "summary.json"


def is_no_room(error: OSError) -> bool:
    """A write that failed for lack of room: disk full, quota or file size limit, or a short
    write (numpy's ``tofile`` reports a full disk as "N requested and M written", no errno)."""
    if error.errno in NO_ROOM:
        return True
    return error.errno is None and re.search(r"requested and \d+ written", str(error)) is not None


class ArtifactStoreFull(OSError):
    """The artifact volume has no room for a file (disk full, quota, file size limit)."""


class ArtifactStore:
    """Jobs' inputs and outputs in ``objects`` (default: the local directory ``root``); ``root``
    also holds the local staging folders."""

    def __init__(self, root: str | Path, objects: ObjectStore | None = None):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.objects = objects if objects is not None else LocalObjects(self.root)
        self._last_sweep = float("-inf")
        self._drawing: weakref.WeakValueDictionary[str, threading.Lock] = (
            weakref.WeakValueDictionary()  # job id → the lock of its pictures' drawing
        )
        self._drawing_lock = threading.Lock()

    def job_dir(self, job_id: str) -> Path:
        """The job's local folder (its staging; on the local store also its objects)."""
        return self.root / job_id

    def save_input(self, job_id: str, data: bytes) -> None:
        """Store a job's input whole or not at all."""
        try:
            self.objects.put_bytes(f"{job_id}/input.bin", data)
        except OSError as error:
            if error.errno in NO_ROOM:
                raise ArtifactStoreFull(error.errno, "no room for the input") from error
            raise

    def load_input(self, job_id: str) -> bytes:
        return self.objects.get_bytes(f"{job_id}/input.bin")

    def remove_input(self, job_id: str) -> None:
        """Delete a job's stored input (its outputs, if any, stay)."""
        self.objects.delete([f"{job_id}/input.bin"])

    def staging_dir(self, job_id: str, attempt: int) -> Path:
        folder = self.job_dir(job_id) / f".staging-{attempt}-{os.getpid()}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def publish(self, job_id: str, staging: Path) -> None:
        """Store a finished staging folder's files as the job's outputs, each a whole object,
        ``summary.json`` last (once; a second finisher's files are discarded)."""
        try:
            if self.objects.stat(self._key(job_id, SUMMARY)) is None:
                files = sorted(staging.iterdir(), key=lambda p: (p.name == SUMMARY, p.name))
                for path in files:
                    self.objects.move_in(self._key(job_id, path.name), path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.job_dir(job_id).rmdir()  # S3: nothing of the job stays on this disk

    def draw_pictures(self, job_id: str, name: str | None = None) -> None:
        """Store the job's pictures (or make sure that ``name`` is stored, if it is a picture)
        drawn from its saved sources, if they are not stored yet: the first request of a
        picture draws them all, once per process (two processes may both draw them and write
        the same bytes), then deletes the sources. A job without sources (drawn by its worker,
        or not a picture) is left as it is."""
        if name is not None and (not name.endswith(".png") or self.exists(job_id, name)):
            return
        sources = self._key(job_id, PICTURE_SOURCES)
        with self._drawing_lock:
            lock = self._drawing.setdefault(job_id, threading.Lock())
        with lock:
            if name is not None and self.exists(job_id, name):
                return  # drawn while this request waited
            try:
                data = self.objects.get_bytes(sources)
            except ObjectMissing:
                return
            for picture, png in render_pictures(data).items():
                if self.objects.stat(self._key(job_id, picture)) is None:
                    self.objects.put_bytes(self._key(job_id, picture), png)
            # Every picture is stored: the sources (uncompressed arrays, often larger than the
            # pictures) are not needed again. A process that reads them too late finds the
            # pictures stored.
            self.objects.delete([sources])

    def _key(self, job_id: str, name: str) -> str:
        return f"{job_id}/outputs/{name}"

    def exists(self, job_id: str, name: str) -> bool:
        """Whether the job has the output ``name`` (names with a path part are refused)."""
        return self._valid(name) and self.objects.stat(self._key(job_id, name)) is not None

    def stream(self, job_id: str, name: str) -> Iterator[bytes] | None:
        """The content of a job's output in chunks, or None."""
        if not self._valid(name):
            return None
        try:
            return self.objects.stream(self._key(job_id, name))
        except ObjectMissing:
            return None

    def download(self, job_id: str, name: str) -> Path | tuple[Iterator[bytes], int] | None:
        """A job's output as a file of this machine (the local store: served with its length
        and byte ranges), as (chunks, size) from a bucket, or None."""
        if not self._valid(name):
            return None
        key = self._key(job_id, name)
        if (path := self.objects.local_file(key)) is not None:
            return path
        info = self.objects.stat(key)
        chunks = self.stream(job_id, name) if info is not None else None
        return None if chunks is None else (chunks, info.size)

    def presigned_url(self, job_id: str, name: str, expires_s: int) -> str | None:
        """A URL of the bucket that serves the output for ``expires_s`` (None: a local store)."""
        return self.objects.presigned_url(self._key(job_id, name), expires_s)

    def bundle(self, job_id: str, names: list[str], extra: dict[str, bytes]) -> Iterator[bytes]:
        """A zip of the job's outputs ``names`` (read from the store one chunk at a time) and
        the ``extra`` files, produced as it is written (the zip's sizes follow each entry);
        outputs missing from the store are left out."""
        sink = _Chunks()
        with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in extra.items():
                archive.writestr(name, data)
                yield sink.take()
            for name in names:
                chunks = self.stream(job_id, name)
                if chunks is None:
                    continue
                with archive.open(name, "w") as entry:
                    for chunk in chunks:
                        entry.write(chunk)
                        yield sink.take()
        yield sink.take()

    @staticmethod
    def _valid(name: str) -> bool:
        return not ("/" in name or "\\" in name or name.startswith(".") or not name)

    def sweep(self, ttl_s: int, every_s: float = 300) -> int:
        """Delete the objects of jobs whose newest object is older than ``ttl_s`` (and their
        local folders); returns how many jobs went. Lists the store at most once per
        ``every_s`` seconds, since callers ask after every job."""
        now = time.time()
        if now - self._last_sweep < every_s:
            return 0
        self._last_sweep = now
        cutoff = now - ttl_s
        newest: dict[str, float] = {}
        keys: dict[str, list[str]] = {}
        try:
            listed = self.objects.list()
        except StoreUnavailable as error:  # the next sweep tries again
            log.warning("artifact sweep skipped: %s", error)
            return 0
        for info in listed:
            job_id = info.key.partition("/")[0]
            if JOB_ID.fullmatch(job_id):  # job objects only (the models and cache live here)
                newest[job_id] = max(newest.get(job_id, 0.0), info.modified)
                keys.setdefault(job_id, []).append(info.key)
        expired = [job_id for job_id, modified in newest.items() if modified < cutoff]
        for job_id in expired:
            self.objects.delete(keys[job_id])
            shutil.rmtree(self.job_dir(job_id), ignore_errors=True)
        return len(expired)


class _Chunks(io.RawIOBase):
    """A write-only, non-seekable stream whose written bytes are taken away in pieces."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:
        piece = bytes(data)
        self._parts.append(piece)
        return len(piece)

    def take(self) -> bytes:
        taken, self._parts = b"".join(self._parts), []
        return taken
