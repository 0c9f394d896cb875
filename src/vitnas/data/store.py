"""Where a dataset lives: a local directory, an `s3://bucket/prefix` URI, or a root of a file system a
higher layer registered (the data stage registers DVC-tracked paths, read through `dvc.api`), read
the same way.

S3 goes through boto3 with its usual configuration (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` for MinIO or any S3-compatible store). A pod that only has
the MLflow secret also finds the store through `MLFLOW_S3_ENDPOINT_URL`. Every failure (no bucket,
no credentials, access denied, no such key) is a `DataError` naming the URI, never a traceback.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vitnas.errors import DataError

ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")


def is_s3(uri: str | Path | None) -> bool:
    return isinstance(uri, str) and uri.startswith("s3://")


# ---- other file systems (registered by a higher layer: e.g. DVC-tracked paths by the data stage) ----
# prefix -> opener(root) -> (an fsspec-like file system with find/cat_file, the base path in it)
_OPENERS: dict[str, Callable[[str], tuple[Any, str]]] = {}


def register_filesystem(prefix: str, opener: Callable[[str], tuple[Any, str]]) -> None:
    """Let roots starting with `prefix` be read through the file system `opener(root)` returns."""
    _OPENERS[prefix] = opener


def is_fs(root: str | Path | None) -> bool:
    return isinstance(root, str) and any(root.startswith(p) for p in _OPENERS)


def _open_fs(root: str) -> tuple[Any, str]:
    for prefix, opener in _OPENERS.items():
        if root.startswith(prefix):
            return opener(root)
    raise DataError(f"data.root: {root}: no reader for this kind of root")


def fs_list(root: str) -> Iterator[tuple[str, int]]:
    """(path relative to the root, size) of every file under a registered root, in path order."""
    fs, path = _open_fs(root)
    try:
        found = fs.find(path, detail=True)
    except Exception as e:  # file systems raise many types
        raise DataError(f"data.root: {path}: {type(e).__name__}: {str(e)[:120]}") from None
    if not found:
        raise DataError(f"data.root: {path} not found in {root.rsplit('::', 1)[0]}")
    for name in sorted(found):
        rel = name[len(path):].lstrip("/") if path else name
        yield rel, int(found[name].get("size") or 0)


def fs_read(root: str, rel: str) -> bytes:
    fs, path = _open_fs(root)
    return fs.cat_file(f"{path}/{rel}" if path else rel)


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str  # no leading slash; a prefix ends without one too

    @classmethod
    def parse(cls, uri: str, what: str = "data.root") -> S3Uri:
        rest = uri.removeprefix("s3://")
        bucket, _, key = rest.partition("/")
        if not bucket or not uri.startswith("s3://") or any(c.isspace() for c in uri):
            raise DataError(f"{what}: {uri!r} is not an s3://bucket/prefix URI")
        return cls(bucket, key.strip("/"))

    def join(self, *parts: str) -> S3Uri:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Uri(self.bucket, key)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def endpoint_url() -> str | None:
    for name in ENDPOINT_ENVS:
        if os.environ.get(name):
            return os.environ[name]
    return None


_CLIENTS: dict[tuple, object] = {}


def client():
    """A boto3 S3 client (one per process, endpoint and access key: clients are not fork-safe)."""
    key = (os.getpid(), endpoint_url(), os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"))
    if key not in _CLIENTS:
        import boto3
        from botocore.config import Config

        session = boto3.session.Session()  # not boto3's default session, which keeps the first credentials
        _CLIENTS[key] = session.client("s3", endpoint_url=key[1],
                                       config=Config(retries={"max_attempts": 5, "mode": "standard"}))
    return _CLIENTS[key]


def s3_error(e: Exception, uri: str | S3Uri, what: str) -> DataError:
    """One line for a boto3/botocore failure."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(e, NoCredentialsError):
        return DataError(f"{what}: {uri}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
                         "pass the cluster secret with --secret)")
    if isinstance(e, EndpointConnectionError):
        return DataError(f"{what}: {uri}: cannot reach the S3 endpoint {endpoint_url() or '(AWS default)'}")
    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "")
        msg = {"NoSuchBucket": "no such bucket", "NoSuchKey": "no such object", "404": "not found",
               "AccessDenied": "access denied", "403": "access denied",
               "InvalidAccessKeyId": "the access key is not valid",
               "SignatureDoesNotMatch": "the secret key does not match"}.get(code, code or str(e)[:100])
        return DataError(f"{what}: {uri}: {msg}")
    return DataError(f"{what}: {uri}: {type(e).__name__}: {str(e)[:160]}")


def _call(fn, uri, what: str):
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn()
    except (BotoCoreError, ClientError) as e:
        raise s3_error(e, uri, what) from None


def list_objects(uri: S3Uri, what: str = "data.root") -> Iterator[tuple[str, int]]:
    """(key relative to `uri`, size) of every object under the prefix, in key order."""
    prefix = uri.key + "/" if uri.key else ""
    pages = client().get_paginator("list_objects_v2").paginate(Bucket=uri.bucket, Prefix=prefix)
    it = iter(pages)
    while True:
        page = _call(lambda: next(it, None), uri, what)
        if page is None:
            return
        for obj in page.get("Contents", []):
            yield obj["Key"][len(prefix):], int(obj["Size"])


def get_bytes(uri: S3Uri, what: str = "data.root") -> bytes:
    return _call(lambda: client().get_object(Bucket=uri.bucket, Key=uri.key)["Body"].read(), uri, what)


def get_range(uri: S3Uri, offset: int, size: int, what: str = "data.root") -> bytes:
    """`size` bytes of an object from `offset` (an HTTP range request)."""
    if size == 0:
        return b""
    return _call(lambda: client().get_object(Bucket=uri.bucket, Key=uri.key,
                                             Range=f"bytes={offset}-{offset + size - 1}")["Body"].read(), uri, what)


def download(uri: S3Uri, path: Path, what: str = "data.root") -> None:
    _call(lambda: client().download_file(uri.bucket, uri.key, str(path)), uri, what)


def upload(path: Path, uri: S3Uri, what: str = "data.shards") -> None:
    _call(lambda: client().upload_file(str(path), uri.bucket, uri.key), uri, what)


def check_bucket(uri: S3Uri, what: str) -> None:
    """Fail early (before any work) on a missing bucket or missing credentials."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client().head_bucket(Bucket=uri.bucket)
    except ClientError as e:  # HEAD answers a bare 404 for a missing bucket
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
            raise DataError(f"{what}: {uri}: no such bucket") from None
        raise s3_error(e, uri, what) from None
    except BotoCoreError as e:
        raise s3_error(e, uri, what) from None
