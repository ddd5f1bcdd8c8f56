"""The house rules that a reader relies on (docs/architecture.md): the import layers are checked by import-linter in
.ci/run; these check what it does not."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "medclf"


def _modules():
    return sorted(SRC.rglob("*.py"))


def test_no_module_imports_a_private_name_from_another():
    found = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("medclf"):
                found += [f"{path.relative_to(SRC)}: from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found


def test_only_the_run_spec_reads_the_run_description():
    """train_config.json is read through RunSpec alone: no module digs into its 'run' or 'config' parts."""
    found = []
    for path in _modules():
        if path.name == "runspec.py":
            continue
        text = path.read_text(encoding="utf-8")
        found += [f"{path.name}: {pattern}" for pattern in ('.get("run"', '["run"]', '.get("config"', '["config"]')
                  if pattern in text]
    assert not found, found
