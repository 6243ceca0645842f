"""The pairs export never writes member names that escape the directory the tar is extracted into."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from c2p.data.pairs import export_pairs, load_export, unsafe_key


def _raw_tar(path: Path, members: dict[str, bytes]) -> Path:
    """A tar with exactly these member names (tarfile keeps leading '/' and '..' as given)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_unsafe_key_names_absolute_and_dotdot_keys():
    assert unsafe_key("synthetic-0001") == "" and unsafe_key("dir/obj") == "" and unsafe_key("a..b") == ""
    assert unsafe_key("/etc/cron.d/x") == "absolute"
    assert unsafe_key("../../up") == unsafe_key("a/../../b") == unsafe_key("a\\..\\b") == "has a '..' component"


def test_export_refuses_absolute_and_dotdot_members_and_writes_only_safe_names(tmp_path):
    png = b"\x89PNG-not-decoded"  # the export copies image bytes unchanged
    src = _raw_tar(tmp_path / "in.tar", {
        "good-0001.rgb.0.png": png, "good-0001.txt": b"a chair",
        "/tmp/abs-0002.rgb.0.png": png, "/tmp/abs-0002.txt": b"a table",
        "../../up-0003.rgb.0.png": png, "../../up-0003.txt": b"a lamp",
        "sub/dir-0004.rgb.1.png": png, "sub/dir-0004.txt": b"a bed",
    })
    summary = export_pairs([src], tmp_path / "pairs")
    with tarfile.open(Path(summary.train_data)) as tar:
        names = tar.getnames()
    assert sorted(names) == ["good-0001_v0.png", "good-0001_v0.txt", "sub/dir-0004_v1.png", "sub/dir-0004_v1.txt"]
    assert summary.objects == 4 and summary.num_samples == 2
    assert len(summary.unsafe_keys) == 2
    assert "'/tmp/abs-0002' (absolute)" in summary.unsafe_keys[0]
    assert "'../../up-0003' (has a '..' component)" in summary.unsafe_keys[1]
    assert load_export(tmp_path / "pairs").unsafe_keys == summary.unsafe_keys  # recorded in pairs.json


def test_export_of_only_unsafe_members_fails_naming_them(tmp_path):
    src = _raw_tar(tmp_path / "in.tar", {"/abs-1.rgb.0.png": b"x", "/abs-1.txt": b"a cup"})
    with pytest.raises(ValueError, match="1 with unsafe keys"):
        export_pairs([src], tmp_path / "pairs")
