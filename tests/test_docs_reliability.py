"""docs/reliability.md cannot rot: every test it names exists, down to the parametrize id."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(\[[^\]`]+\])?`")
SECTIONS = ("## Bad input: panels", "## Bad input: configs", "## CLI misuse", "## Security", "## Faults")


def _references() -> list[tuple[str, str, str]]:
    return [(path, name, ids or "") for path, name, ids in REFERENCE.findall(DOC.read_text())]


def test_the_record_has_its_sections_and_names_tests():
    text = DOC.read_text()
    assert all(f"\n{section}\n" in text for section in SECTIONS)
    assert len(_references()) >= 50


def test_every_named_test_function_exists():
    missing = []
    for path, name, _ in _references():
        source = ROOT / path
        defined = source.is_file() and name in {
            node.name for node in ast.parse(source.read_text()).body if isinstance(node, ast.FunctionDef)
        }
        if not defined:
            missing.append(f"{path}::{name}")
    assert missing == []


def test_every_named_parametrize_id_is_collected():
    named = {f"{path}::{name}{ids}" for path, name, ids in _references() if ids and ids != "[ID]"}  # [ID]: any case
    files = sorted({ref.split("::")[0] for ref in named})
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    collected = set(done.stdout.splitlines())
    assert named - collected == set(), done.stdout[-2000:] + done.stderr[-2000:]
