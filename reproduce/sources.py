"""Which files make a paper's numbers: the stale check of records and the code version of kept rows.

:func:`paper_paths` lists a paper's notebook, config, package and every module of ``reproduce``
they import (an AST walk, so a new import counts at once); :func:`code_version` hashes their contents.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .paths import REPO_ROOT


def paper_paths(paper: str) -> list[str]:
    """The files whose change can move ``paper``'s numbers, relative to the repository: its notebook,
    its config, its package and every module of ``reproduce`` these import, directly or not
    (``train.py``, ``data/``, ``claims.py``, ...)."""
    from . import config

    package = REPO_ROOT / "reproduce" / paper
    roots = [REPO_ROOT / "reproduce" / "configs" / f"{paper}.py"]
    roots += sorted(package.rglob("*.py")) if package.is_dir() else [REPO_ROOT / "reproduce" / f"{paper}.py"]
    paths = {f"notebooks/{config.get_spec(paper).notebook}"} | {str(p.relative_to(REPO_ROOT)) for p in _imported(roots)}
    if package.is_dir():
        paths.add(f"reproduce/{paper}")  # new files in the package count too
    return sorted(paths)


def _imported(roots: list[Path]) -> set[Path]:
    """``roots`` and every module file of the ``reproduce`` package they import, transitively."""
    import ast

    base = REPO_ROOT / "reproduce"
    seen: set[Path] = set()
    todo = [p for p in roots if p.is_file()]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        package = path.parent.relative_to(REPO_ROOT).parts
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[tuple[str, ...]] = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    stem = package[:len(package) - node.level + 1]
                elif node.module and node.module.split(".")[0] == "reproduce":
                    stem = ()
                else:
                    continue
                mod = tuple(node.module.split(".")) if node.module else ()
                names += [stem + mod + (a.name,) for a in node.names] + [stem + mod]
            elif isinstance(node, ast.Import):
                names += [tuple(a.name.split(".")) for a in node.names if a.name.split(".")[0] == "reproduce"]
            for parts in names:
                for candidate in (REPO_ROOT.joinpath(*parts).with_suffix(".py"), REPO_ROOT.joinpath(*parts, "__init__.py")):
                    if candidate.is_file() and base in candidate.parents and candidate not in seen:
                        todo.append(candidate)
    return seen


def code_version(paper: str) -> str:
    """A hash of the contents of the paper's code (:func:`reproduce.results.paper_paths`: its notebook,
    package, config and every module they import): rows computed by other code are not reused."""
    digest = hashlib.sha256()
    for rel in paper_paths(paper):
        path = REPO_ROOT / rel
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            if f.is_file():
                digest.update(str(f.relative_to(REPO_ROOT) if f.is_relative_to(REPO_ROOT) else f).encode())
                digest.update(f.read_bytes())
    return digest.hexdigest()[:16]
