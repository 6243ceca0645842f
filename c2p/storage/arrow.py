"""The same object store as a pyarrow filesystem, for Ray Data and pyarrow datasets.

    import ray
    from c2p.storage.arrow import arrow_filesystem, arrow_paths
    fs = arrow_filesystem()
    ds = ray.data.read_webdataset(arrow_paths(["s3://data/shapenet/shard-000000.tar"]), filesystem=fs)

pyarrow's S3 client (the AWS C++ SDK) reads credentials and region from the standard AWS
environment and files, but not ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3`` (pyarrow 26: it
resolves ``<bucket>.s3.<region>.amazonaws.com`` even when they are set), so an S3-compatible
store (SeaweedFS, MinIO, Ceph) needs ``endpoint_override``: this module passes the endpoint
boto3 uses, so one set of variables serves c2p's loader, ``pipe:`` URLs and Ray Data. Addresses
must be for path-style access (``bucket/key``, no scheme), hence :func:`arrow_paths`.
"""

from __future__ import annotations

import os
from urllib.parse import urlparse

from c2p.storage.s3 import SCHEME, S3Path

__all__ = ["endpoint_url", "arrow_filesystem", "arrow_paths"]


def endpoint_url() -> str:
    """The S3 endpoint of the environment (``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``; "" for AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""


def arrow_filesystem():
    """A ``pyarrow.fs.S3FileSystem`` on the environment's store (its endpoint, region and credentials)."""
    import pyarrow.fs as pafs

    kw = {}
    endpoint = endpoint_url()
    if endpoint:
        parsed = urlparse(endpoint)
        kw.update(endpoint_override=parsed.netloc or parsed.path, scheme=parsed.scheme or "https")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kw["region"] = region
    return pafs.S3FileSystem(**kw)


def arrow_paths(urls: list[str]) -> list[str]:
    """``s3://bucket/key`` addresses as pyarrow's ``bucket/key`` paths."""
    out = []
    for url in urls:
        if not url.startswith(SCHEME):
            raise ValueError(f"{url!r}: expected an s3://bucket/key address")
        where = S3Path.parse(url)
        out.append(f"{where.bucket}/{where.key}")
    return out
