"""The dependency direction of ../shared/DESIGN.md, enforced: `proxy.wire` (the shared leaf layer) imports
nothing else of `proxy`; `mockserver` imports only `proxy.wire` of the gateway; the gateway's core
(`CORE` below: what the stages build on) imports no stage. `proxy.pipeline` and `proxy.resources` are
the composition root that puts stages together, and the app and the CLI sit on top."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path, root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """Every module a file imports (absolute, with relative imports resolved), with its line."""
    module = ".".join(path.relative_to(root).with_suffix("").parts)
    if module.endswith(".__init__"):
        module = module[: -len(".__init__")]
    here = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from . import x` may import a submodule
                yield node.lineno, f"{target}.{alias.name}"


def _files(package: str) -> list[Path]:
    return sorted((ROOT / package.replace(".", "/")).rglob("*.py"))


@pytest.mark.parametrize("path", _files("proxy/wire"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_wire_layer_imports_nothing_else_of_proxy(path: Path) -> None:
    bad = [(line, name) for line, name in imports(path)
           if name.startswith("proxy.") and not name.startswith("proxy.wire") and name != "proxy"]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("path", _files("mockserver"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_mock_imports_only_the_wire_layer_of_the_gateway(path: Path) -> None:
    bad = [(line, name) for line, name in imports(path)
           if (name == "proxy" or name.startswith("proxy.")) and not name.startswith("proxy.wire")]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


# the gateway's core: what every stage may use; none of it may import a stage (even for typing only)
CORE = ("proxy/exchange.py", "proxy/errors.py", "proxy/config.py", "proxy/body.py", "proxy/clock.py",
        "proxy/durable.py", "proxy/logs.py", "proxy/upstream.py", "proxy/background.py", "proxy/db", "proxy/wire")


def _core() -> list[Path]:
    found: list[Path] = []
    for name in CORE:
        path = ROOT / name
        found += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return found


@pytest.mark.parametrize("path", _core(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_imports_no_stage(path: Path) -> None:
    bad = [(line, name) for line, name in imports(path)
           if name.startswith(("proxy.stages", "proxy.pipeline", "proxy.resources", "proxy.app", "proxy.cli"))]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    offender = tmp_path / "proxy" / "wire" / "probe.py"
    offender.parent.mkdir(parents=True)
    offender.write_text("from ..stages import budget\nfrom . import sse\n")
    names = [name for _, name in imports(offender, tmp_path)]
    assert "proxy.stages" in names and "proxy.stages.budget" in names and "proxy.wire.sse" in names
    core = tmp_path / "proxy" / "exchange.py"
    core.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .stages.route import Target\n")
    assert "proxy.stages.route" in [name for _, name in imports(core, tmp_path)]
