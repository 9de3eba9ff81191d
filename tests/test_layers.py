"""The layers of the code base: arrows point down only, and there is no import cycle.

Every import counts, the lazy ones inside functions too (``tests/import_graph.py`` reads the
source). A module may import modules of its own layer or of the layers below it. A new module
must be placed in ``LAYERS`` (CONTRIBUTING.md says where things go).
"""

from __future__ import annotations

import import_graph

#: layer rank -> (name, modules). Lower ranks may not import higher ones.
LAYERS = {
    0: ("core", ["mgan_jax", "mgan_jax.errors", "mgan_jax.generators", "mgan_jax.generators.*",
                 "mgan_jax.latents", "mgan_jax.objective", "mgan_jax.operators",
                 "mgan_jax.optimize", "mgan_jax.perceptual", "mgan_jax.metrics",
                 "mgan_jax.lpips", "mgan_jax.baselines"]),
    1: ("engine", ["mgan_jax.engine", "mgan_jax.sharding", "mgan_jax.inversion"]),
    2: ("files", ["mgan_jax.fileio", "mgan_jax.checkpoint", "mgan_jax.latents_io",
                  "mgan_jax.imageio", "mgan_jax.runstate", "mgan_jax.batch_checkpoint"]),
    3: ("pipeline", ["mgan_jax.tasks", "mgan_jax.pipeline", "mgan_jax.outputs",
                     "mgan_jax.progress", "mgan_jax.resumable", "mgan_jax.defaults",
                     "mgan_jax.directions", "mgan_jax.edits"]),
    4: ("weight readers", ["convert", "convert.*"]),
    5: ("assets", ["mgan_jax.assets"]),
    6: ("command lines", ["mgan_jax.cli", "mgan_jax.invert", "mgan_jax.invert_images",
                          "mgan_jax.invert_reproduce", "mgan_jax.generate",
                          "mgan_jax.manipulate", "convert.__main__",
                          # python -m mgan_jax.evaluate and its library, which resolves every
                          # run's settings exactly as the inversion command line does (cli)
                          "mgan_jax.evaluate", "mgan_jax.evaluation",
                          "mgan_jax.evaluation_cases", "mgan_jax.evaluation_config",
                          "mgan_jax.evaluation_runs", "mgan_jax.evaluation_report"]),
}


def rank_of(module: str) -> int | None:
  """The layer of ``module``: an exact entry wins over a ``pkg.*`` pattern."""
  for rank, (_, mods) in LAYERS.items():
    if module in mods:
      return rank
  for rank, (_, mods) in sorted(LAYERS.items()):
    for m in mods:
      if m.endswith(".*") and module.startswith(m[:-1]):
        return rank
  return None


def test_every_module_has_a_layer():
  missing = sorted(m for m in import_graph.project_modules() if rank_of(m) is None)
  assert not missing, f"place these modules in tests/test_layers.py LAYERS: {missing}"


def test_arrows_point_down_only():
  bad = []
  for module, targets in sorted(import_graph.graph().items()):
    r = rank_of(module)
    for t in sorted(targets):
      if rank_of(t) > r:
        bad.append(f"{module} ({LAYERS[r][0]}) imports {t} ({LAYERS[rank_of(t)][0]})")
  assert not bad, "\n".join(bad)


def test_no_import_cycle():
  assert import_graph.cycles(import_graph.graph()) == []


def test_the_checker_sees_lazy_imports_and_cycles(tmp_path):
  """The graph reads function-level imports and finds a cycle through them."""
  modules = {"pkg.a": tmp_path / "a.py", "pkg.b": tmp_path / "b.py"}
  modules["pkg.a"].write_text("import pkg.b\n")
  modules["pkg.b"].write_text("def f():\n  from pkg import a\n  return a\n")
  g = {m: import_graph.imports_of(m, p, {**modules, "pkg": tmp_path})
       for m, p in modules.items()}
  assert g == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
  assert import_graph.cycles(g) == [["pkg.a", "pkg.b"]]
