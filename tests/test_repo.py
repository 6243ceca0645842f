"""The repository keeps its promises: the README's commands, CI, and the import rules of DESIGN.md."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_ci_runs_the_readme_test_command():
    run, test = (REPO / ".ci" / "run").read_text(), _readme_commands()[1]
    assert test in run.splitlines(), f".ci/run does not contain the README's test command {test!r}"


def test_readme_first_command_runs_the_demo():
    assert "launch/demo.py" in _readme_commands()[0]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_import_rules():
    """Heavy engines stay in their rooms (DESIGN.md, 'Which way imports run')."""
    allowed = {
        "ray": ("shards/", "launch/"),
        "moderngl": ("c2p/render/mesh.py",),
        "deepspeed": ("c2p/train/engine.py", "c2p/train/checkpoint.py"),
        "submitit": ("launch/", "c2p/distributed.py"),
        "shards": ("shards/", "launch/"),
        "launch": ("launch/",),
    }
    bad = []
    for path in sorted(list((REPO / "c2p").rglob("*.py")) + list((REPO / "shards").rglob("*.py")) + list((REPO / "launch").rglob("*.py"))):
        rel = path.relative_to(REPO).as_posix()
        for mod in _imports(path) & set(allowed):
            if not rel.startswith(allowed[mod]):
                bad.append(f"{rel} imports {mod}")
    assert not bad, bad
