"""The artifact store: a local directory (a shared volume when distributed), one folder per job.

``<root>/<job id>/input.bin`` holds the submitted input; the worker writes the outputs into a
temporary folder and renames it into place, so a job's outputs appear all at once or not at all.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import time
from pathlib import Path

MEDIA_TYPES = {".npy": "application/octet-stream", ".npz": "application/octet-stream",
               ".png": "image/png", ".json": "application/json"}  # fmt: skip
NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
JOB_ID = re.compile(r"[0-9a-f]{32}")  # jobs.records.new_job_id


def is_no_room(error: OSError) -> bool:
    """A write that failed for lack of room: disk full, quota or file size limit, or a short
    write (numpy's ``tofile`` reports a full disk as "N requested and M written", no errno)."""
    if error.errno in NO_ROOM:
        return True
    return error.errno is None and re.search(r"requested and \d+ written", str(error)) is not None


class ArtifactStoreFull(OSError):
    """The artifact volume has no room for a file (disk full, quota, file size limit)."""


class ArtifactStore:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._last_sweep = float("-inf")

    def job_dir(self, job_id: str) -> Path:
        return self.root / job_id

    def output_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "outputs"

    def save_input(self, job_id: str, data: bytes) -> None:
        """Store a job's input whole or not at all: on failure nothing of the job is left."""
        folder = self.job_dir(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "input.bin.tmp"
        try:
            tmp.write_bytes(data)
            os.replace(tmp, folder / "input.bin")
        except OSError as error:
            tmp.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                folder.rmdir()
            if error.errno in NO_ROOM:
                raise ArtifactStoreFull(error.errno, "no room for the input") from error
            raise

    def load_input(self, job_id: str) -> bytes:
        return (self.job_dir(job_id) / "input.bin").read_bytes()

    def remove_input(self, job_id: str) -> None:
        """Delete a job's stored input (its outputs, if any, stay)."""
        (self.job_dir(job_id) / "input.bin").unlink(missing_ok=True)

    def staging_dir(self, job_id: str, attempt: int) -> Path:
        folder = self.job_dir(job_id) / f".staging-{attempt}-{os.getpid()}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        return folder

    def publish(self, job_id: str, staging: Path) -> Path:
        """Move a finished staging folder into place (once; a second finisher is discarded)."""
        target = self.output_dir(job_id)
        try:
            os.rename(staging, target)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def path(self, job_id: str, name: str) -> Path | None:
        """The file ``name`` of a job's outputs, or None (names with a path part are refused)."""
        if "/" in name or "\\" in name or name.startswith("."):
            return None
        candidate = self.output_dir(job_id) / name
        return candidate if candidate.is_file() else None

    def sweep(self, ttl_s: int, every_s: float = 300) -> int:
        """Delete job folders older than ``ttl_s``; returns how many went. Scans the folder at
        most once per ``every_s`` seconds, since callers ask after every job."""
        now = time.time()
        if now - self._last_sweep < every_s:
            return 0
        self._last_sweep = now
        cutoff = now - ttl_s
        removed = 0
        for folder in self.root.iterdir():  # job folders only (the model store may live here)
            if JOB_ID.fullmatch(folder.name) and folder.stat().st_mtime < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed
