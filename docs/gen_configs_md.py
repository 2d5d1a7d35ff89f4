"""Regenerate docs/configs.md from core/config.py (field, type, default, docstring).

  python docs/gen_configs_md.py > docs/configs.md
"""

import ast
import dataclasses
import typing
from pathlib import Path

import core.config as mc

SECTIONS = [
    ("model.encoder", mc.EncoderConfig), ("model.heads", mc.HeadsConfig), ("data", mc.DataConfig),
    ("portfolio", mc.PortfolioConfig), ("training", mc.TrainingConfig), ("ensemble", mc.EnsembleConfig),
]


def field_docs(cls) -> dict[str, str]:
    tree = ast.parse(Path(mc.__file__).read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__)
    docs, last = {}, None
    for stmt in node.body:
        if isinstance(stmt, ast.AnnAssign):
            last = stmt.target.id
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and last:
            docs[last] = " ".join(stmt.value.value.split())
            last = None
    return docs


def main() -> None:
    print("# Config reference\n")
    print("Generated from `core/config.py` by `docs/gen_configs_md.py`; the loader refuses unknown keys,")
    print("wrong types and inconsistent values with a `ConfigError` naming the file, key and value.")
    print("Override any key on the command line with `--set section.key=value`.\n")
    hints = {}
    for name, cls in SECTIONS:
        hints = typing.get_type_hints(cls)
        docs = field_docs(cls)
        print(f"## `{name}`\n\n| key | type | default | meaning |\n|---|---|---|---|")
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f"`{f.default!r}`"
            elif f.default_factory is not dataclasses.MISSING:
                default = f"`{f.default_factory()!r}`"
            else:
                default = "required"
            tp = mc._type_name(hints[f.name]).replace("|", "or")
            print(f"| `{f.name}` | {tp} | {default} | {docs.get(f.name, '').replace('|', '/')} |")
        print()


if __name__ == "__main__":
    main()
