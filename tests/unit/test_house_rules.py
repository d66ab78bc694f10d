"""The house rules hold for later work too (issue 29): modules stay small enough to read
whole, functions short where a table does not read better whole, and one clock."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TREES = (REPO / "operator" / "lmms_operator", REPO / "runner-image" / "lmms_runner")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
#: Functions whose body is a table (one entry per line) and reads better whole.
TABLES = {
    # The operator's Prometheus series, one definition after the other.
    ("operator/lmms_operator/metrics.py", "__init__"),
}
#: A generated module says so in its first lines, and is exempt from the size rule.
GENERATED = "generated"


def _modules() -> list[Path]:
    return sorted(p for tree in TREES for p in tree.rglob("*.py"))


def test_no_module_is_over_450_lines_unless_generated() -> None:
    over = []
    for path in _modules():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_MODULE_LINES and GENERATED not in "\n".join(lines[:3]).lower():
            over.append(f"{path.relative_to(REPO)}: {len(lines)}")
    assert not over, over


def test_no_function_is_over_80_lines_unless_a_table() -> None:
    over = []
    for path in _modules():
        name = str(path.relative_to(REPO))
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES and (name, node.name) not in TABLES:
                over.append(f"{name}:{node.lineno} {node.name}: {length}")
    assert not over, over


def _clocks(tree: Path) -> list[str]:
    found = []
    for path in sorted(tree.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in (
                "now",
                "_now",
            ):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_the_clock_is_defined_once_in_the_operator_and_at_most_once_in_the_runner() -> None:
    operator, runner = TREES
    assert len(_clocks(operator)) == 1, _clocks(operator)
    assert len(_clocks(runner)) <= 1, _clocks(runner)
