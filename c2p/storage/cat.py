"""Stream objects to stdout: WebDataset's ``pipe:`` URLs over the same client and retries as c2p's loader.

    python -m c2p.storage.cat s3://data/shapenet/shard-000000.tar > shard.tar
    wds.WebDataset("pipe:python -m c2p.storage.cat s3://data/shapenet/shard-{000000..000009}.tar")

WebDataset expands the braces first and runs one command per shard. Each object is read by
:class:`~c2p.storage.s3.S3ReadStream` (a broken body resumes with a ranged GET at the byte it
reached), so a dropped connection costs a retry rather than the rest of the shard, which is what
open_clip users get from ``pipe:aws s3 cp``. Exit status 0 when every object was written whole;
1 with the error on stderr (the address and the server's error code, never credentials).
"""

from __future__ import annotations

import sys

from c2p.storage import open_binary

CHUNK = 1 << 20


def cat(urls: list[str], out) -> None:
    """Write the bytes of each object (or local file) of ``urls`` to the binary stream ``out``, in order."""
    for url in urls:
        with open_binary(url) as f:
            while chunk := f.read(CHUNK):
                out.write(chunk)
    out.flush()


def main(argv: list[str] | None = None) -> int:
    urls = sys.argv[1:] if argv is None else argv
    if not urls:
        print("usage: python -m c2p.storage.cat s3://bucket/key [...]", file=sys.stderr)
        return 2
    try:
        cat(urls, sys.stdout.buffer)
    except BrokenPipeError:  # the reader stopped early (a webdataset slice): not an error of ours
        return 0
    except OSError as e:
        print(f"c2p.storage.cat: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
