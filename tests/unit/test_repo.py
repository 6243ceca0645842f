"""The repository keeps its promises: the README's commands, CI, and the import rules of DESIGN.md."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


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
    """Every module ``path`` imports, dotted (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _sources() -> list[Path]:
    return sorted(list((REPO / "c2p").rglob("*.py")) + list((REPO / "launch").rglob("*.py")))


# module (and its submodules) -> the only places that may import it
ROOMS = {
    "ray": ("c2p/shards/",),
    "moderngl": ("c2p/render/egl.py",),
    "deepspeed": ("c2p/train/engine.py", "c2p/train/checkpoint.py", "c2p/train/ckptload.py"),
    "submitit": ("c2p/cluster/",),
    # the write side of the data: the commands and the demo drive it, the library never does
    "c2p.shards": ("c2p/shards/", "c2p/cli/", "c2p/demo/"),
    "c2p.cli": ("c2p/cli/", "launch/"),
    "c2p.demo": ("c2p/demo/", "c2p/cli/", "launch/"),
    "launch": (),
}


def test_import_rules():
    """Heavy engines stay in their rooms, and imports run one way (DESIGN.md, 'Which way imports run')."""
    bad = []
    for path in _sources():
        rel = path.relative_to(REPO).as_posix()
        for name in _imports(path):
            for mod, rooms in ROOMS.items():
                if (name == mod or name.startswith(mod + ".")) and not rel.startswith(rooms):
                    bad.append(f"{rel} imports {name}")
    assert not bad, bad


def test_no_import_path_tricks_and_no_job_target_in_scripts():
    """c2p is installed: nothing edits sys.path or PYTHONPATH, and jobs unpickle from ``c2p.*``."""
    bad = []
    for path in _sources():
        text = path.read_text()
        rel = path.relative_to(REPO).as_posix()
        bad += [f"{rel}: {w}" for w in ("sys.path", "PYTHONPATH") if w in text]
        bad += [f"{rel}: target {t}" for t in re.findall(r"[\"']launch\.[\w.]+:\w+[\"']", text)]
    assert not bad, bad


def test_modules_and_launchers_stay_small():
    """One concept per module: no module over 500 lines, no launcher over 120."""
    sizes = {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines()) for p in _sources()}
    assert not {k: n for k, n in sizes.items() if n > 500}
    assert not {k: n for k, n in sizes.items() if k.startswith("launch/") and n > 120}


def test_every_launcher_is_a_console_script():
    """``python launch/X.py`` and the installed ``c2p-X`` run the same ``c2p.cli`` main."""
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for launcher in sorted((REPO / "launch").glob("*.py")):
        name = launcher.stem
        assert scripts.get(f"c2p-{name.replace('_', '-')}") == f"c2p.cli.{name}:main", name
        assert f"from c2p.cli.{name} import main" in launcher.read_text(), name
