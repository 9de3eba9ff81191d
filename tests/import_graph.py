"""The project's import graph, read from the source with ``ast`` (nothing is imported).

Every ``import`` / ``from ... import`` of a project module counts, also the lazy ones inside
functions: a lazy import is still an arrow between layers. Run as a script to print the graph
(module -> the project modules it imports) and its cycles::

    python tests/import_graph.py
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mgan_jax", "convert")


def module_name(path: Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def project_modules() -> dict[str, Path]:
  out = {}
  for pkg in PACKAGES:
    for path in sorted((ROOT / pkg).rglob("*.py")):
      out[module_name(path)] = path
  return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
  """The project module ``name`` refers to (a module, or the package of an attribute)."""
  while name:
    if name in modules:
      return name
    name = name.rpartition(".")[0]
  return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
  tree = ast.parse(path.read_text(), filename=str(path))
  is_pkg = path.name == "__init__.py"
  package = module if is_pkg else module.rpartition(".")[0]
  found: set[str] = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        target = _resolve(alias.name, modules)
        if target:
          found.add(target)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join(parts + ([base] if base else []))
      for alias in node.names:
        target = _resolve(f"{base}.{alias.name}", modules) or _resolve(base, modules)
        if target:
          found.add(target)
  found.discard(module)
  return found


def graph() -> dict[str, set[str]]:
  """module -> the project modules it imports (package ``__init__`` imports excluded as
  targets when the importer lives inside that package: importing a submodule runs its
  package's ``__init__`` but is not an arrow of its own)."""
  modules = project_modules()
  return {m: imports_of(m, p, modules) for m, p in modules.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan)."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on: set[str] = set()
  out: list[list[str]] = []
  counter = [0]

  def visit(v: str) -> None:
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in sorted(g.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
  for v in sorted(g):
    if v not in index:
      visit(v)
  return out


if __name__ == "__main__":
  g = graph()
  for m in sorted(g):
    print(f"{m} -> {', '.join(sorted(g[m])) or '-'}")
  cyc = cycles(g)
  print("cycles:", cyc or "none")
