"""testkit.s3: a real SeaweedFS S3 server starts on free ports, signs requests with its key,
serves a bucket, refuses a wrong key, and leaves no process behind."""

from __future__ import annotations

import botocore.exceptions
import pytest

from testkit.s3 import SeaweedS3


def test_seaweedfs_serves_a_bucket_and_stops(tmp_path):
    server = SeaweedS3(tmp_path)
    s3 = server.start()
    try:
        client = s3.client()
        client.put_object(Bucket=s3.bucket, Key="a/b.txt", Body=b"hello")
        assert client.get_object(Bucket=s3.bucket, Key="a/b.txt")["Body"].read() == b"hello"
        assert s3.keys("a/") == ["a/b.txt"]
        wrong = type(s3)(s3.url, s3.bucket, s3.access_key, "not-the-secret").client()
        with pytest.raises(botocore.exceptions.ClientError, match="SignatureDoesNotMatch"):
            wrong.list_objects_v2(Bucket=s3.bucket)
        assert s3.env("jobs")["EXPLAINER_STORE_URL"] == f"s3://{s3.bucket}/jobs"
        process = server.process.proc
    finally:
        server.stop()
    assert process.poll() is not None  # the server is gone
    with pytest.raises(botocore.exceptions.EndpointConnectionError):
        s3.client().list_objects_v2(Bucket=s3.bucket)
