"""The one resumable loop: items -> fixed batches -> ``pipeline.Inverter`` -> published outputs.

``run_items`` is what ``python -m mgan_jax.invert --image ...`` runs, and what a library user
runs with their own objective (``pipeline.Inverter(..., objective=..., render=...)``)::

    state = open_run_state(out, items, all_names=[it.name for it in items], settings=...)
    with state:
        run_items(items, inverter, out=out, state=state)

With a run ``state`` (``mgan_jax.runstate``) rerunning the same command after a kill resumes:
batch j is always items ``[j*B, (j+1)*B)`` (a fixed composition); a batch whose outputs all
exist is skipped; a batch with a checkpoint continues from it (``checkpoint_every`` of the
inverter > 0 writes them) and gives the uninterrupted run's results; each image is journaled
once its directory is in place, and only missing outputs are written. Without a state the same
loop publishes every output directly (replacing existing ones only with ``force``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mgan_jax import fileio, outputs, runstate
from mgan_jax.errors import UserError
from mgan_jax.pipeline import ImageResult, Inverter, Item
from mgan_jax.progress import Progress


def batches(items: Sequence[Any], batch_size: int) -> list[list[Any]]:
  """The fixed batch composition: batch j = items[j*B:(j+1)*B] (the last one may be short)."""
  if batch_size < 1:
    raise ValueError(f"batch size must be >= 1, got {batch_size}")
  return [list(items[j:j + batch_size]) for j in range(0, len(items), batch_size)]


def open_run_state(out: str | os.PathLike, items: Sequence[Item], *, all_names: Sequence[str],
                   settings: Mapping[str, Any], force: bool = False, process_index: int = 0,
                   process_count: int = 1) -> runstate.RunState:
  """The resumable state of this process's ``items`` in OUT.

  * OUT already holds runs of the same settings (``settings``: what determines a result):
    resume (finished images are skipped, a checkpointed batch continues); ``force`` recomputes
    this run's images (their outputs and journal lines are removed first).
  * OUT holds runs of other settings: UserError naming what differs, unless ``force``: then
    the run state and this process's existing outputs are deleted and a new run starts.
  * No run yet: existing outputs of these items are refused (``outputs.check_free``) unless
    ``force`` (then deleted first).
  ``all_names``: the output names of the whole input list (every process's share), in order.
  """
  if Path(out).exists() and not Path(out).is_dir():
    raise UserError(f"--out {out} exists and is not a directory")
  kw = dict(settings=settings, items=list(all_names), process_index=process_index,
            process_count=process_count)
  if runstate.has_state(out, process_index, process_count):
    try:
      state = runstate.RunState(out, **kw)
    except UserError:
      if not force:
        raise
      state = None
    if state is not None:
      if force:
        _remove_outputs(out, items)
      return state
  else:
    outputs.check_free(out, items, force=force)
  if force:
    runstate.reset_state(out, process_index, process_count)
    _remove_outputs(out, items)
  return runstate.RunState(out, **kw)


def _remove_outputs(out: str | os.PathLike, items: Sequence[Item]) -> None:
  for it in items:
    d = outputs.output_dir(out, it)
    if d.is_dir() and not d.is_symlink():
      shutil.rmtree(d)
    elif d.exists() or d.is_symlink():
      d.unlink()


def run_items(items: Sequence[Item], inverter: Inverter, *, out: str | os.PathLike,
              state: runstate.RunState | None = None, force: bool = False,
              progress: Progress | None = None, run_info: Mapping[str, Any] | None = None,
              latents_meta: Mapping[str, Any] | None = None,
              on_written: Callable[[Item, Path, ImageResult], Any] | None = None,
              lpips_params: Any = None) -> list[Path]:
  """Invert ``items`` in batches of ``inverter.batch_size`` and publish each image's outputs
  as soon as its batch finishes (see the module docstring). Returns the output directories in
  input order. ``lpips_params``: LPIPS weights for metrics.json (``outputs.image_metrics``)."""
  if state is None:
    outputs.check_free(out, items, force=force)
  groups = batches(items, inverter.batch_size)
  progress = progress or Progress(batches=len(groups), iterations=inverter.settings.iterations,
                                  enabled=False)
  outs = {it.name: outputs.output_dir(out, it) for it in items}
  if state is not None:
    changed = state.changed({it.name: it.digest for it in items})
    if changed:
      progress.message(f"input changed since its result was written, recomputing: "
                       f"{', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}")
      _remove_outputs(out, [it for it in items if it.name in changed])
  finished = state.reconcile(outs) if state is not None else set()
  todo = [j for j, g in enumerate(groups) if not all(it.name in finished for it in g)]
  if finished:
    progress.message(f"resuming {out}: {len(finished)} of {len(items)} image(s) already "
                     "finished")
  if todo:
    dt = inverter.compile(groups[todo[0]])
    progress.message(f"compiled in {dt:.1f} s" if dt else "compiled program reused")
  store = state.checkpoints if state is not None else None
  ckpt_batch = store.latest_batch() if store is not None else None
  written = []
  info = dict(run_info or {})
  for b, group in enumerate(groups):
    names = [it.name for it in group]
    if b not in todo:
      written.extend(outs[n] for n in names)
      if ckpt_batch == b:
        store.clear(b)
      continue
    progress.start_batch(b, names, remaining=sum(1 for j in todo if j > b))
    start = None
    if ckpt_batch == b:
      ck = store.load(*inverter.templates(group))
      if ck is not None and ck.batch == b and ck.items == names \
          and ck.extra.get("plan") == inverter.plan:
        start = ck
        progress.resumed_at(ck.state.iteration)
        progress.message(f"[batch {b + 1}/{len(groups)}] resuming from the checkpoint at "
                         f"iteration {ck.state.iteration}")
      else:
        if ck is not None and ck.items == names:
          progress.message(f"[batch {b + 1}/{len(groups)}] the checkpoint at iteration "
                           f"{ck.state.iteration} was made with other --chunk / "
                           "--checkpoint-every values; the batch restarts from iteration 0")
        store.clear(b)
    save = None
    if store is not None and inverter.checkpoint_every:
      save = (lambda bs, extra, b=b, names=names: store.save(b, names, bs, extra=extra))
    results = inverter.run(group, on_chunk=progress.chunk, start=start, on_checkpoint=save)
    for it, res in zip(group, results):
      final = outs[it.name]
      if state is not None and state.is_finished(final):
        written.append(final)   # written before an interruption: kept as it is
        continue
      time_info = {"compile_seconds": round(inverter.compile_seconds, 3),
                   "images_in_batch": len(group), "batch_size": inverter.batch_size}
      publish = (state.publish(final) if state is not None
                 else fileio.publish(final, kind="dir", replace=force))
      with publish as stage:
        outputs.write(stage, it, res, run_info={**info, "time": time_info},
                      latents_meta=latents_meta or {}, lpips_params=lpips_params)
      if state is not None:
        state.mark_finished(it.name, final, digest=it.digest)
      written.append(final)
      if on_written is not None:
        on_written(it, final, res)
    if store is not None:
      store.clear(b)
  return written


__all__ = ["batches", "open_run_state", "run_items"]
