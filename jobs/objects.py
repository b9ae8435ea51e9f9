"""The object store: where artifacts, uploaded models and the engine's trained sets live. One
interface, two implementations: a local directory (the default, :class:`LocalObjects`) and an
S3-compatible bucket (:class:`S3Objects`, boto3), chosen by one variable:

- ``EXPLAINER_STORE_URL=s3://BUCKET/PREFIX``: objects in that bucket, names under PREFIX; unset:
  the local directory ``EXPLAINER_ARTIFACT_DIR``;
- ``EXPLAINER_S3_ENDPOINT``: the endpoint of an S3-compatible server (SeaweedFS, MinIO, Ceph);
  unset: boto3's own ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, else AWS itself;
- credentials and region as boto3 reads them: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``
  (``AWS_SESSION_TOKEN``), ``AWS_DEFAULT_REGION`` / ``AWS_REGION``, or ``AWS_PROFILE``, instance
  and container roles;
- ``EXPLAINER_S3_PRESIGN=true``: artifact downloads answer 307 to a presigned URL of the bucket
  (valid ``EXPLAINER_S3_PRESIGN_EXPIRES_S``, 300 s) instead of streaming through the API.

Objects are written whole: a reader sees an object complete or not at all (a local file is
written beside its name and renamed; an S3 PUT is atomic). Names are ``/``-separated keys.

The engine and the model store read local folders; :meth:`ObjectStore.mirror` gives a
:class:`Mirror` that keeps a local folder equal to the objects under a prefix, keyed by ETag
(an object is downloaded again only when its ETag changes). On a local store the folder *is*
the store's and the mirror does nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from jobs.settings import Settings

CHUNK = 1024 * 1024
MULTIPART_BYTES = 8 * 1024 * 1024  # boto3's multipart threshold
PULL_INTERVAL_S = 0.5  # a mirror lists its prefix at most this often


class StoreUnavailable(OSError):
    """The object store cannot be reached or answered with a server error (the API: 503)."""


class ObjectMissing(KeyError):
    """No object of that name."""


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object: its name (relative to the store's prefix), size, ETag and last
    modification (seconds since the epoch)."""

    key: str
    size: int
    etag: str
    modified: float


class ObjectStore(Protocol):
    """What the jobs layer needs of a store of whole objects."""

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` as ``key`` (replacing it), whole or not at all."""

    def move_in(self, key: str, path: Path) -> None:
        """Store the finished file ``path`` as ``key``; the file is gone afterwards."""

    def get_bytes(self, key: str) -> bytes:
        """The object's content; ObjectMissing if there is none."""

    def stream(self, key: str) -> Iterator[bytes]:
        """The object's content in chunks; ObjectMissing (raised at once) if there is none."""

    def stat(self, key: str) -> ObjectInfo | None:
        """The object's size, ETag and modification time, or None."""

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose name starts with ``prefix``."""

    def delete(self, keys: Iterable[str]) -> None:
        """Delete these objects (missing ones are ignored)."""

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        """A URL that lets its holder GET the object for ``expires_s``, or None (local store)."""

    def local_file(self, key: str) -> Path | None:
        """The object as a file of this machine (the local store), or None (S3)."""

    def reachable(self) -> bool:
        """Whether the store answers now: one quick request, no retries (for /health)."""

    def mirror(self, prefix: str, folder: Path, exclusive: bool = True) -> Mirror:
        """A local copy of the objects under ``prefix`` (see :class:`Mirror`)."""

    def describe(self) -> str:
        """Where the objects are, for logs and errors (no credentials)."""


class Mirror:
    """Keeps ``folder`` equal to the objects under ``prefix``: :meth:`pull` downloads what is new
    or changed (by ETag) and removes local files whose object is gone; :meth:`push` uploads local
    files. Files and folders whose name starts with '.' are the process's own (work in progress)
    and are neither pulled over nor removed. ``exclusive``: the folder holds nothing but the
    mirror (a local file with no object is removed); else only files that came from the store
    are. On a local store this is a no-op."""

    def __init__(self, store: ObjectStore | None, prefix: str, folder: Path,
                 min_interval_s: float = 0.0, exclusive: bool = True):  # fmt: skip
        self.store, self.prefix, self.folder = store, prefix, Path(folder)
        self.exclusive = exclusive
        self.min_interval_s = min_interval_s
        self._etags: dict[str, str] = {}  # relative path → ETag of what this process holds
        self._lock = threading.Lock()
        self._last_pull = float("-inf")

    def pull(self, force: bool = False) -> bool:
        """Bring the folder up to date; returns whether anything changed. At most once per
        ``min_interval_s`` unless ``force``."""
        if self.store is None:
            return False
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last_pull < self.min_interval_s:
                return False
            remote = {info.key[len(self.prefix) :]: info for info in self.store.list(self.prefix)}
            self._last_pull = now  # a listing that failed is tried again at the next call
            changed = False
            for relative, info in remote.items():
                if _hidden(relative) or self._etags.get(relative) == info.etag:
                    continue
                target = self.folder / relative
                if target.is_file() and _etag_of_file(target) == info.etag:
                    self._etags[relative] = info.etag  # made here, or pulled by a sibling
                    continue
                _write_atomically(target, self.store.get_bytes(self.prefix + relative))
                self._etags[relative], changed = info.etag, True
            for path in list(self.folder.rglob("*")) if self.folder.is_dir() else []:
                relative = path.relative_to(self.folder).as_posix()
                ours = self.exclusive or relative in self._etags
                if path.is_file() and ours and not _hidden(relative) and relative not in remote:
                    path.unlink(missing_ok=True)
                    self._etags.pop(relative, None)
                    changed = True
            return changed

    def push(self, paths: Iterable[Path]) -> None:
        """Upload these files of the folder (in this order: put the one that completes a set
        last), keeping the local copies."""
        if self.store is None:
            return
        for path in paths:
            relative = Path(path).resolve().relative_to(self.folder.resolve()).as_posix()
            data = Path(path).read_bytes()
            self.store.put_bytes(self.prefix + relative, data)
            with self._lock:
                self._etags[relative] = f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'

    def remove(self, relative_prefix: str) -> None:
        """Delete the objects under ``prefix + relative_prefix`` (the local files go at the next
        pull, or now by the caller)."""
        if self.store is None:
            return
        self.store.delete(i.key for i in self.store.list(self.prefix + relative_prefix))


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def _etag_of_file(path: Path) -> str:
    """The ETag S3 gives an object uploaded in one PUT: the MD5 of its content, quoted."""
    digest = hashlib.md5(usedforsecurity=False)  # S3's ETag
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return f'"{digest.hexdigest()}"'


def _write_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` as ``target`` via a hidden file beside it and a rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class LocalObjects:
    """Objects as files under ``root`` (``key`` → ``root/key``)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(part in ("", ".", "..") for part in parts) or "\\" in key:
            raise ObjectMissing(key)
        return self.root.joinpath(*parts)

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        try:
            _write_atomically(target, data)
        except BaseException:  # e.g. a full disk: no empty folder is left either
            self._prune(target)
            raise

    def _prune(self, path: Path) -> None:
        """Remove the empty folders above ``path``, up to the root."""
        for parent in path.parents:
            if parent == self.root:
                break
            try:
                parent.rmdir()
            except OSError:
                break

    def move_in(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, target)  # same disk: atomic
        except OSError:  # another disk: copy beside the target, then rename
            _write_atomically(target, Path(path).read_bytes())
            Path(path).unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectMissing(key) from None

    def stream(self, key: str) -> Iterator[bytes]:
        try:
            handle = open(self._path(key), "rb")  # noqa: SIM115 - closed by the generator
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectMissing(key) from None

        def chunks() -> Iterator[bytes]:
            with handle:
                yield from iter(lambda: handle.read(CHUNK), b"")

        return chunks()

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            path = self._path(key)
            if not path.is_file():
                return None
            found = path.stat()
        except (ObjectMissing, FileNotFoundError):
            return None
        return ObjectInfo(key, found.st_size, f"{found.st_mtime_ns:x}-{found.st_size:x}",
                          found.st_mtime)  # fmt: skip

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        head, _, _ = prefix.rpartition("/")
        start = self.root.joinpath(*head.split("/")) if head else self.root
        found = []
        for folder, folders, files in os.walk(start):
            folders[:] = [f for f in folders if not f.startswith(".")]
            for name in files:
                if name.startswith("."):
                    continue  # work in progress
                key = Path(folder, name).relative_to(self.root).as_posix()
                if key.startswith(prefix) and (info := self.stat(key)) is not None:
                    found.append(info)
        return sorted(found, key=lambda info: info.key)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            with contextlib.suppress(ObjectMissing):
                path = self._path(key)
                path.unlink(missing_ok=True)
                self._prune(path)

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        return None

    def local_file(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def reachable(self) -> bool:
        return self.root.is_dir()

    def mirror(self, prefix: str, folder: Path, exclusive: bool = True) -> Mirror:
        return Mirror(None, prefix, folder)  # the folder is the truth (a shared volume)

    def describe(self) -> str:
        return f"the directory {self.root}"


def _unavailable(error: Exception) -> bool:
    """Whether a botocore error means the store is away (not that an object is missing)."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or status in (401, 403)  # a wrong key is the operator's to fix
    return isinstance(error, BotoCoreError)


def boto3_client(endpoint_url: str | None, config):
    """An S3 client of its own session (boto3's default session is not thread-safe to create
    clients from), with credentials and region from the usual AWS variables."""
    import boto3

    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


class S3Objects:
    """Objects in an S3-compatible bucket, names under ``prefix`` (boto3)."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None):
        from botocore.config import Config

        self.bucket, self.prefix = bucket, f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.client = boto3_client(endpoint_url, Config(
            s3={"addressing_style": "path"}, signature_version="s3v4", connect_timeout=3,
            read_timeout=30, retries={"mode": "standard", "max_attempts": 3},
        ))  # fmt: skip
        self._probe = None

    @contextlib.contextmanager
    def _calls(self, key: str = "") -> Iterator[None]:
        """Translate botocore's errors: a missing object, or the store away."""
        from botocore.exceptions import ClientError

        try:
            yield
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectMissing(key) from None
            if _unavailable(error):
                raise StoreUnavailable(f"{self.describe()}: {code or error}") from error
            raise
        except Exception as error:
            if _unavailable(error):
                raise StoreUnavailable(f"{self.describe()}: {error}") from error
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._calls(key):
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def move_in(self, key: str, path: Path) -> None:
        with self._calls(key):
            if Path(path).stat().st_size < MULTIPART_BYTES:  # one PUT: no transfer threads
                with open(path, "rb") as handle:
                    self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=handle)
            else:  # parts in parallel, each retried on its own
                self.client.upload_file(str(path), self.bucket, self.prefix + key)
        Path(path).unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        with self._calls(key):
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()

    def stream(self, key: str) -> Iterator[bytes]:
        with self._calls(key):
            body = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"]

        def chunks() -> Iterator[bytes]:
            with contextlib.closing(body):
                yield from body.iter_chunks(CHUNK)

        return chunks()

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            with self._calls(key):
                head = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ObjectMissing:
            return None
        return ObjectInfo(key, head["ContentLength"], head["ETag"],
                          head["LastModified"].timestamp())  # fmt: skip

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        found = []
        with self._calls(prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                found.extend(
                    ObjectInfo(item["Key"][len(self.prefix):], item["Size"], item["ETag"],
                               item["LastModified"].timestamp())
                    for item in page.get("Contents", [])
                )  # fmt: skip
        return found

    def delete(self, keys: Iterable[str]) -> None:
        names = [{"Key": self.prefix + key} for key in keys]
        with self._calls():
            for start in range(0, len(names), 1000):  # DeleteObjects takes up to 1000 names
                self.client.delete_objects(Bucket=self.bucket,
                                           Delete={"Objects": names[start:start + 1000],
                                                   "Quiet": True})  # fmt: skip

    def presigned_url(self, key: str, expires_s: int) -> str | None:
        with self._calls(key):
            return self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self.prefix + key},
                ExpiresIn=expires_s,
            )  # fmt: skip

    def local_file(self, key: str) -> Path | None:
        return None

    def reachable(self) -> bool:
        from botocore.config import Config

        if self._probe is None:  # its own client: a second, not the jobs' 3 attempts of 3 s
            self._probe = boto3_client(
                self.endpoint_url, Config(s3={"addressing_style": "path"},
                                          signature_version="s3v4", connect_timeout=1,
                                          read_timeout=2, retries={"max_attempts": 1}),
            )  # fmt: skip
        try:
            self._probe.head_bucket(Bucket=self.bucket)
        except Exception:
            return False
        return True

    def mirror(self, prefix: str, folder: Path, exclusive: bool = True) -> Mirror:
        return Mirror(self, prefix, folder, PULL_INTERVAL_S, exclusive)

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"


def parse_store_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` → (bucket, prefix)."""
    scheme, _, rest = url.partition("://")
    bucket, _, prefix = rest.partition("/")
    if scheme != "s3" or not bucket:
        raise ValueError(f"EXPLAINER_STORE_URL must be s3://bucket[/prefix], not {url[:80]!r}")
    return bucket, prefix.strip("/")


def open_object_store(settings: Settings) -> ObjectStore:
    """The store the settings name: the S3 bucket of ``store_url`` (EXPLAINER_STORE_URL), else
    the local artifact directory."""
    if settings.object_store_url is None:
        return LocalObjects(settings.artifact_dir)
    bucket, prefix = parse_store_url(settings.object_store_url)
    return S3Objects(bucket, prefix, settings.s3_endpoint)
