"""What a newcomer taking the project over relies on outside the code: the map (docs/architecture.md) names only
modules and names that exist, every benchmark script is listed in benchmarks/README.md, every results folder says
how it was made, and no store that a tool creates (MLflow, Optuna) is committed."""

from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "medclf"
TICKED = re.compile(r"`([^`\n]+)`")
DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+(\(\))?$")


def _modules() -> dict[str, list[str]]:
    """Every module of the package by its last name ('pipeline' -> ['training.pipeline'])."""
    found: dict[str, list[str]] = {}
    for path in SRC.rglob("*.py"):
        dotted = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        found.setdefault(dotted.rsplit(".", 1)[-1], []).append(dotted)
    return found


def _resolves(name: str, modules: dict[str, list[str]]) -> bool:
    """`training.loop.train_epochs`, `methods.FIT_METHODS`, `ServeSettings.load_options()`: a module, or a name
    inside one (a module given by its full or its last name; a class named alone is looked up in every module)."""
    parts = name.removesuffix("()").split(".")
    if parts[0] not in modules and importlib.util.find_spec(parts[0]) is not None:  # a library's name: `scipy.stats.bootstrap`
        value: object = None
        for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                value = importlib.import_module(".".join(parts[:cut]))
                break
            except ImportError:
                continue
        return all((value := getattr(value, p, None)) is not None for p in parts[cut:])
    for cut in range(len(parts), 0, -1):
        heads = [".".join(parts[:cut])] + (modules.get(parts[cut - 1], []) if cut == 1 else [])
        for head in heads:
            if not (SRC / Path(*head.split("."))).with_suffix(".py").is_file() and not (SRC / Path(*head.split("."))).is_dir():
                continue
            value = importlib.import_module(f"medclf.{head}")
            try:
                for attribute in parts[cut:]:
                    value = getattr(value, attribute)
            except AttributeError:
                continue
            return True
    for dotted_modules in modules.values():  # a class or function named first: `ServeSettings.load_options()`
        for dotted in dotted_modules:
            module = importlib.import_module(f"medclf.{dotted}")
            value = getattr(module, parts[0], None)
            if value is not None and all((value := getattr(value, p, None)) is not None for p in parts[1:]):
                return True
    return False


def test_the_architecture_map_names_only_what_exists() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    modules = _modules()
    missing = []
    for token in TICKED.findall(text):
        token = token.strip()
        if token.endswith(".py") or token.endswith("/"):  # a file or folder of the package
            if not ((SRC / token).exists() or (ROOT / token).exists() or (ROOT / "tests" / token).exists()):
                missing.append(token)
        elif DOTTED.match(token) and not re.search(r"\.(json|md|html|toml|png|csv|txt|onnx)$", token):
            if not _resolves(token, modules):
                missing.append(token)
    for row in re.findall(r"^\| [^|]* \| ([^|]+) \| ([^|]+) \|", text, flags=re.M):  # the layer table
        package, inside = row[0].strip().strip("`"), row[1]
        if package in ("package", "---") or "," in package:
            continue
        for module in re.findall(r"`([a-z_.]+)`", inside):
            base = SRC if package == "top-level modules" else SRC / package
            if not (base / Path(*module.split("."))).with_suffix(".py").is_file():
                missing.append(f"{package}: {module}")
    assert not missing, f"docs/architecture.md names what does not exist: {missing}"


def test_benchmarks_readme_lists_every_script() -> None:
    listed = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8")
    scripts = sorted(p.relative_to(ROOT / "benchmarks").as_posix() for p in (ROOT / "benchmarks").rglob("*.py")
                     if "results" not in p.parts and p.name != "__init__.py")
    assert scripts
    assert not [s for s in scripts if Path(s).name not in listed], "benchmarks/README.md does not list every script"


def test_every_results_folder_says_how_it_was_made() -> None:
    folders = sorted(p for p in (ROOT / "benchmarks" / "results").iterdir() if p.is_dir())
    assert folders
    lacking = [f.name for f in folders if not (f / "README.md").is_file()]
    assert not lacking, f"results folders without a README (machine, date, command, what it shows): {lacking}"


def test_no_tracking_store_is_tracked_by_git() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    stores = [f for f in tracked if Path(f).suffix == ".db" or "mlruns" in Path(f).parts or Path(f).name == "mlflow.db"]
    assert not stores, f"stores that tools create are committed: {stores}"
    ignored = subprocess.run(["git", "check-ignore", "mlflow.db", "mlruns/x", "study.db"], cwd=ROOT,
                             capture_output=True, text=True).stdout.split()
    assert ignored == ["mlflow.db", "mlruns/x", "study.db"]
