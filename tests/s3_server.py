"""A local S3-compatible server for tests: moto's server mode on 127.0.0.1, on a free port.

Fixtures (import them into a test module: ``from s3_server import s3_server, s3``):

- ``s3_server`` (module scope): the endpoint URL of a running moto server; the AWS environment
  (dummy credentials, region, ``AWS_ENDPOINT_URL``) points at it while the module's tests run, so
  s3fs, boto3 and subprocesses started by the tests all use it. Skips with the reason when moto or
  s3fs is not installed or the server does not start.
- ``s3``: a fresh bucket per test; returns ``(s3fs filesystem, "s3://<bucket>")``.
"""

from __future__ import annotations

import logging
import os
import uuid

import pytest

_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_SESSION_TOKEN": None, "AWS_PROFILE": None, "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def s3_server():
    try:
        import s3fs  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        pytest.skip(f"a local S3 server needs moto[server] and s3fs (pip install 'moto[server]' s3fs): {e}")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    try:
        server.start()
        host, port = server.get_host_and_port()
    except Exception as e:  # a port or thread problem: say so, do not fail unrelated tests
        pytest.skip(f"moto's S3 server did not start: {type(e).__name__}: {e}")
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in [*_ENV, "AWS_ENDPOINT_URL"]}
    for k, v in {**_ENV, "AWS_ENDPOINT_URL": endpoint}.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    from s3fs import S3FileSystem

    S3FileSystem.clear_instance_cache()  # instances made before carry other credentials
    try:
        yield endpoint
    finally:
        server.stop()
        S3FileSystem.clear_instance_cache()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3(s3_server):
    """A fresh bucket: ``(fs, "s3://bucket")``."""
    import fsspec

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    return fs, f"s3://{bucket}"
