"""The object-storage mirror of a run's checkpoints (c2p.train.remoteckpt) against a real SeaweedFS:
upload order and keep-K, an upload that fails halfway, a step saved again, a damaged remote tag
at resume. The tags are folders of files with a real commit marker (the mirror moves bytes and
never opens them); the whole chain with DeepSpeed ranks is tests/integration/test_s3_chain.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from c2p.train.checkpoint import COMMIT_NAME, committed_tags, tag_name
from c2p.train.ckptverify import CHECKSUM, build_manifest
from c2p.train.remoteckpt import RemoteCheckpoints


def write_tag(root: Path, step: int, payload: bytes = b"") -> Path:
    """A committed tag folder: two rank shards and model states, and a marker listing their sha256."""
    tag = root / tag_name(step)
    tag.mkdir(parents=True)
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                 "zero_pp_rank_1_mp_rank_00_optim_states.pt"):
        (tag / name).write_bytes(f"{name} of step {step}".encode() + payload)
    marker = {"tag": tag.name, "step": step, "checksum": CHECKSUM, "files": build_manifest(tag, [], skip=(COMMIT_NAME,))}
    (tag / COMMIT_NAME).write_text(json.dumps(marker))
    return tag


def keys(server, bucket: str, prefix: str) -> set[str]:
    c = server.client()
    return {o["Key"][len(prefix) + 1:] for p in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/")
            for o in p.get("Contents", [])}


def latest(server, bucket: str, prefix: str) -> str:
    return server.client().get_object(Bucket=bucket, Key=f"{prefix}/latest")["Body"].read().decode()


@pytest.fixture
def bucket(s3_server, request):
    name = "ckpt-" + request.node.name.replace("_", "-")[5:40].strip("-")
    return s3_server.bucket(name)[len("s3://"):]


def test_upload_order_keep_k_and_a_failed_upload(s3_server, bucket, tmp_path, monkeypatch):
    monkeypatch.setattr("c2p.train.remoteckpt.UPLOAD_BACKOFF_S", 0.1)
    mirror = RemoteCheckpoints(f"s3://{bucket}/run", keep=2)
    for step in (10, 20, 30):
        mirror.upload_async(write_tag(tmp_path, step))
    assert mirror.wait() is None
    got = keys(s3_server, bucket, "run")
    assert {k.split("/")[0] for k in got} == {"step_00000020", "step_00000030", "latest"}  # keep 2
    assert latest(s3_server, bucket, "run") == "step_00000030" and len(got) == 2 * 4 + 1

    # a tag whose upload fails halfway (a file gone) is never committed, and latest stays
    broken = write_tag(tmp_path, 40)
    (broken / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    mirror.upload_async(broken)
    assert "upload of step_00000040" in (mirror.wait() or "")
    got = keys(s3_server, bucket, "run")
    assert f"step_00000040/{COMMIT_NAME}" not in got and latest(s3_server, bucket, "run") == "step_00000030"
    assert mirror.committed(mirror.tree()) == ["step_00000020", "step_00000030"]

    # a later good upload commits and prunes the older committed tag and the leftover below it
    mirror.upload(write_tag(tmp_path, 50))
    assert {k.split("/")[0] for k in keys(s3_server, bucket, "run")} == {"step_00000030", "step_00000050", "latest"}


def test_a_step_saved_again_is_uncommitted_before_its_files_change(s3_server, bucket, tmp_path):
    """A run resumed before step 20 saves step 20 again: while its files are replaced, latest
    names step 10, and a replacement that fails leaves step 20 uncommitted, never half-new."""
    mirror = RemoteCheckpoints(f"s3://{bucket}/run", keep=3)
    mirror.upload(write_tag(tmp_path / "a", 10))
    mirror.upload(write_tag(tmp_path / "a", 20))
    assert latest(s3_server, bucket, "run") == "step_00000020"
    redo = write_tag(tmp_path / "b", 20, payload=b" (redone)")
    (redo / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(OSError):
        mirror.upload(redo, attempts=1)
    assert latest(s3_server, bucket, "run") == "step_00000010"
    assert mirror.committed(mirror.tree()) == ["step_00000010"]
    fetched = mirror.fetch(tmp_path / "fetched")  # what a new node would resume from
    assert fetched == "step_00000010"


def test_resume_downloads_the_newest_intact_remote_tag(s3_server, bucket, tmp_path, caplog):
    mirror = RemoteCheckpoints(f"s3://{bucket}/run", keep=3)
    for step in (10, 20):
        mirror.upload(write_tag(tmp_path / "src", step))
    # the newest remote tag is damaged in the bucket (same size, other bytes)
    key = "run/step_00000020/zero_pp_rank_1_mp_rank_00_optim_states.pt"
    c = s3_server.client()
    body = c.get_object(Bucket=bucket, Key=key)["Body"].read()
    c.put_object(Bucket=bucket, Key=key, Body=body[::-1])
    root = tmp_path / "node" / "checkpoints"
    with caplog.at_level("WARNING", logger="c2p.train"):
        assert RemoteCheckpoints(f"s3://{bucket}/run", keep=3).fetch(root) == "step_00000010"
    assert "step_00000020" in caplog.text and "zero_pp_rank_1_mp_rank_00_optim_states.pt" in caplog.text
    assert [t.tag for t in committed_tags(root)] == ["step_00000010"] and (root / "latest").read_text() == "step_00000010"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000010"]  # no download leftovers
    src = tmp_path / "src" / "step_00000010"
    assert all((root / "step_00000010" / p.name).read_bytes() == p.read_bytes() for p in src.iterdir())

    c.put_object(Bucket=bucket, Key="run/step_00000010/mp_rank_00_model_states.pt", Body=b"cut")
    with pytest.raises(ValueError, match=r"no committed tag in s3://.*/run verifies after download: step_00000020 .*"
                                         r"step_00000010 .*mp_rank_00_model_states.pt: 3 bytes"):
        RemoteCheckpoints(f"s3://{bucket}/run", keep=3).fetch(tmp_path / "node2")
    assert RemoteCheckpoints(f"s3://{bucket}/empty", keep=3).fetch(tmp_path / "node3") is None
