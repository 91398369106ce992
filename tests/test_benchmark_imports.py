"""Benchmarks run rarely and by hand, so a renamed function breaks them silently (bench_kd.py
imported a quantizer that the one-quantizer change had removed and died after an hour of
training). Every `from dsmn_host... import name` in benchmarks/ and scripts/ must resolve."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = sorted((ROOT / "benchmarks").glob("*.py")) + sorted((ROOT / "scripts").glob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_package_names_a_benchmark_imports_exist(path):
    missing = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dsmn_host"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                if hasattr(module, alias.name):
                    continue
                try:
                    importlib.import_module(f"{node.module}.{alias.name}")
                except ImportError:
                    missing.append(f"line {node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dsmn_host"):
                    importlib.import_module(alias.name)
    assert not missing, f"{path.name}: " + "; ".join(missing)
