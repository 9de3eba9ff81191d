"""The engine and its placement: pure helpers in-process; on 4 forced CPU devices, sharded ==
unsharded == single-image runs, and a researcher's own objective running through the CLI's own
path (``pipeline.Inverter`` + ``resumable.run_items``), checkpointed, killed and resumed.

The device tests run in a subprocess because the host device count must be set (XLA_FLAGS)
before JAX starts. Model: a random-weight 8x8 PGGAN, multi_z (3 codes, layer 2), pixel loss.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mgan_jax import engine, sharding
from mgan_jax.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def test_chunk_boundaries_are_a_function_of_the_settings():
  assert engine.chunk_boundaries(10, 4, 3) == (3, 4, 6, 8, 9, 10)
  assert engine.chunk_boundaries(10, 4, 0) == (4, 8, 10)
  assert engine.chunk_boundaries(12, 100, 4) == (4, 8, 12)
  assert engine.chunk_boundaries(0, 4, 2) == ()
  # a resumed run from any checkpoint boundary repeats the remaining chunks exactly
  full = engine.chunk_boundaries(50, 7, 5)
  for k in (5, 10, 35):
    assert k in full
    assert tuple(b for b in full if b > k) == tuple(
        b for b in engine.chunk_boundaries(50, 7, 5) if b > k)
  with pytest.raises(ValueError):
    engine.chunk_boundaries(10, 0, 2)


def test_padding_repeats_the_last_image_and_unpad_drops_it():
  tree = {"a": np.arange(6, dtype=np.float32).reshape(3, 2), "b": [np.array([1, 2, 3])]}
  padded = sharding.pad_batch(tree, 4)
  np.testing.assert_array_equal(padded["a"], [[0, 1], [2, 3], [4, 5], [4, 5]])
  np.testing.assert_array_equal(padded["b"][0], [1, 2, 3, 3])
  back = sharding.unpad(padded, 3)
  np.testing.assert_array_equal(back["a"], tree["a"])
  assert sharding.padded_size(6, 4) == 8 and sharding.padded_size(8, 4) == 8
  assert sharding.padded_size(1, 4) == 4
  with pytest.raises(ValueError):
    sharding.batch_size_of({"a": np.zeros((2, 1)), "b": np.zeros((3, 1))})


@pytest.mark.parametrize("n,p", [(0, 3), (5, 2), (6, 3), (7, 4), (2, 4)])
def test_process_shares_partition_the_inputs_in_order(n, p):
  items = [f"i{k}" for k in range(n)]
  shares = [sharding.process_share(items, process_index=i, process_count=p) for i in range(p)]
  assert sum(shares, []) == items
  sizes = [len(s) for s in shares]
  assert max(sizes) - min(sizes) <= 1
  assert sharding.process_share(items) == items  # this test process: 0 of 1


def test_initialize_distributed_single_process_and_flag_errors():
  assert sharding.initialize_distributed(environ={}) == (0, 1)
  assert sharding.initialize_distributed(None, 1, 0, environ={}) == (0, 1)
  with pytest.raises(UserError, match="--coordinator"):
    sharding.initialize_distributed(None, 2, 0, environ={})
  with pytest.raises(UserError, match="--num-processes and --process-id"):
    sharding.initialize_distributed("127.0.0.1:1234", None, None, environ={})
  with pytest.raises(UserError, match="--process-id must be in 0..1"):
    sharding.initialize_distributed("127.0.0.1:1234", 2, 2, environ={})
  with pytest.raises(UserError, match="HOST:PORT"):
    sharding.initialize_distributed("localhost", 2, 0, environ={})
  with pytest.raises(UserError, match="MGAN_JAX_NUM_PROCESSES"):
    sharding.initialize_distributed(environ={"MGAN_JAX_NUM_PROCESSES": "two"})
  # env fallback reaches the same checks
  with pytest.raises(UserError, match="--process-id must be in"):
    sharding.initialize_distributed(environ={"MGAN_JAX_COORDINATOR": "127.0.0.1:1",
                                             "MGAN_JAX_NUM_PROCESSES": "2",
                                             "MGAN_JAX_PROCESS_ID": "5"})


_DEVICE_SCRIPT = textwrap.dedent("""
    import functools, json, os, sys, tempfile
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_disable_most_optimizations", True)
    from mgan_jax import engine as E, latents as L, objective as O, optimize as opt
    from mgan_jax import imageio, pipeline, resumable, sharding as S, tasks
    from mgan_jax.generators.pggan import PGGAN
    from test_objective import research_loss, softmax_compose, L1_ONLY

    gen = PGGAN(resolution=8, latent_dim=8, channels=(8, 8))
    params = gen.init_params(jax.random.key(0))
    cfg = O.LossConfig(mse_weight=1.0, l1_weight=0.5, perceptual_weight=0.0)
    loss_fn = O.Objective(gen, method="multi_z", layer=2, config=cfg)
    ocfg = opt.OptimizerConfig(name="adam", lr=0.05)
    B, T = 6, 4
    imgs = jax.random.uniform(jax.random.key(1), (B, 1, 8, 8, 3), minval=-1, maxval=1)
    tgts = [O.make_target(imgs[i], None, config=cfg) for i in range(B)]
    lats = [L.init_latents(jax.random.key(10 + i), gen, params, method="multi_z", codes=3,
                           layer=2) for i in range(B)]
    stack = lambda trees: jax.tree.map(lambda *x: np.stack([np.asarray(v) for v in x]), *trees)
    lat_b, tgt_b = stack(lats), stack(tgts)
    args = (tgt_b, params, None)
    mesh4 = S.local_mesh()
    E.clear_cache()
    r4 = E.run_batch(loss_fn, lat_b, args, arg_axes=(0, None, None), optimizer=ocfg,
                     iterations=T, chunk=4, mesh=mesh4)
    progs = list(E._PROGRAMS.values())
    hlo = "".join(p.as_text() for p in progs)
    single = E.optimize(loss_fn, lats[B - 1], (tgts[B - 1], params, None), optimizer=ocfg,
                        iterations=T, chunk=4)
    collectives = [w for w in ("all-reduce", "all-gather", "collective-permute", "all-to-all",
                               "reduce-scatter") if w in hlo]
    diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    # A researcher's variant (softmax composition, L1 only) on the CLI's own path: 5 images,
    # batches of 2 on 4 devices, checkpointed at iteration 3 of 6, killed right after the
    # checkpoint of the second batch, resumed; vs an uninterrupted run and single-image runs.
    loss = functools.partial(research_loss, gen=gen, layer=2)
    render = O.Renderer(gen=gen, method="multi_z", layer=2, compose=softmax_compose)
    settings = pipeline.Settings(method="multi_z", codes=3, layer=2, loss=L1_ONLY,
                                 optimizer=ocfg, iterations=6, chunk=3)
    task = tasks.parse_task("reconstruct")
    rng = np.random.default_rng(3)
    items = []
    for k in range(5):
      im = rng.uniform(-1, 1, (8, 8, 3)).astype(np.float32)
      items.append(pipeline.Item(name=f"img{k}", path=f"img{k}.png", input=im,
                                 fit=imageio.FitReport((8, 8), (8, 8)),
                                 observation=tasks.degrade(task, im), clean=im))
    make = lambda: pipeline.Inverter(gen, params, None, settings, task, batch_size=2,
                                     checkpoint_every=3, objective=loss, render=render)
    tmp = tempfile.mkdtemp()

    def run(out, kill_after=None):
      state = resumable.open_run_state(out, items, all_names=[i.name for i in items],
                                       settings={"variant": "softmax"})
      saves = []
      real = state.checkpoints.save
      def save(*a, **kw):
        path = real(*a, **kw)
        saves.append(a[0])
        if kill_after is not None and len(saves) == kill_after:
          raise KeyboardInterrupt          # the process dies right after this checkpoint
        return path
      state.checkpoints.save = save
      try:
        with state:
          resumable.run_items(items, make(), out=out, state=state)
        return "finished", saves
      except KeyboardInterrupt:
        return "killed", saves

    from mgan_jax import latents_io
    lat_of = lambda out, k: latents_io.load(os.path.join(out, f"img{k}", "latents.npz"))[0]
    full = run(os.path.join(tmp, "full"))
    killed = run(os.path.join(tmp, "resumed"), kill_after=2)
    left = sorted(n for n in os.listdir(os.path.join(tmp, "resumed")) if not n.startswith("."))
    resumed = run(os.path.join(tmp, "resumed"))
    inv = make()
    single_diff = 0.0
    for k, it in enumerate(items):
      res = E.optimize(loss, inv.initial_latents(), (inv.target(it), params, None),
                       optimizer=ocfg, iterations=6, chunk=3)
      single_diff = max(single_diff, diff(res.latents, lat_of(os.path.join(tmp, "full"), k)))
    same = all(diff(lat_of(os.path.join(tmp, "full"), k), lat_of(os.path.join(tmp, "resumed"),
                                                                 k)) == 0.0 for k in range(5))
    img = lambda out, k: open(os.path.join(out, f"img{k}", "result.png"), "rb").read()
    same_png = all(img(os.path.join(tmp, "full"), k) == img(os.path.join(tmp, "resumed"), k)
                   for k in range(5))
    print(json.dumps({
        "devices": len(jax.devices()), "pad4": r4.padding,
        "loss_shape": list(r4.losses.shape), "lat_shape": list(r4.latents["z"].shape),
        "single_lat_diff": diff(jax.tree.map(lambda x: x[B - 1], r4.latents), single.latents),
        "single_loss_diff": diff(r4.losses[B - 1], single.losses),
        "loss_drop": float(np.min(r4.losses[:, 0] - r4.losses[:, -1])),
        "distinct": bool(np.all(np.abs(np.diff(r4.latents["z"], axis=0)) .max() > 1e-3)),
        "collectives": collectives,
        "variant": {"full": full[0], "killed": killed, "left": left, "resumed": resumed,
                    "single_diff": single_diff, "same_latents": same, "same_png": same_png}}))
""")


def test_engine_on_4_devices_sharded_single_and_a_custom_objective_resumed():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _DEVICE_SCRIPT, str(ROOT)], capture_output=True,
                        text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert r["devices"] == 4
  assert r["pad4"] == 2                               # batch 6 -> 8 on 4 devices
  assert r["loss_shape"] == [6, 4] and r["lat_shape"] == [6, 3, 8]
  assert r["collectives"] == []                       # nothing crosses devices
  # each image of the sharded batch equals its own single-image run (float32 round-off of
  # differently batched convolutions at most)
  assert r["single_lat_diff"] < 1e-5 and r["single_loss_diff"] < 1e-5, r
  assert r["loss_drop"] > 0 and r["distinct"]
  v = r["variant"]
  # batches [img0 img1] [img2 img3] [img4], each checkpointed at iteration 3: the kill right
  # after batch 2's checkpoint leaves batch 1's outputs only
  assert v["full"] == "finished" and v["killed"] == ["killed", [0, 1]]
  assert v["left"] == ["img0", "img1"]
  assert v["resumed"] == ["finished", [2]]           # batch 2 continued at 3, batch 3 fresh
  assert v["same_latents"] and v["same_png"], v       # resumed == uninterrupted, bit for bit
  assert v["single_diff"] < 1e-5, v                   # batched == single-image runs


def _quadratic(lat, target):
  import jax.numpy as jnp
  return jnp.sum((lat - target) ** 2)


def _quartic(lat, target):
  import jax.numpy as jnp
  return jnp.sum((lat - target) ** 4)


def test_programs_compile_once_when_requested_from_several_threads():
  """Engines compiling from threads (the evaluation compiles the next runs' programs while one
  runs): a program requested twice at once is compiled once, distinct ones both compile, and
  the runs are unchanged."""
  from concurrent.futures import ThreadPoolExecutor
  from mgan_jax import optimize as opt
  engine.clear_cache()
  lat = np.zeros((2, 3), np.float32)
  tgt = np.arange(6, dtype=np.float32).reshape(2, 3)
  ocfg = opt.OptimizerConfig(name="adam", lr=0.1)
  make = lambda fn: engine.Engine(fn, optimizer=ocfg, arg_axes=(0,), iterations=4, chunk=4,
                                  batch_size=2)
  engines = [make(_quadratic), make(_quadratic), make(_quartic)]
  with ThreadPoolExecutor(3) as pool:
    seconds = list(pool.map(lambda e: e.compile(lat, (tgt,)), engines))
  assert sorted(s > 0 for s in seconds[:2]) == [False, True] and seconds[2] > 0
  assert len(engine._PROGRAMS) == 2 and not engine._COMPILING
  a, b = engines[0].run(lat, (tgt,)), engines[1].run(lat, (tgt,))
  np.testing.assert_array_equal(a.latents, b.latents)
  assert a.compile_seconds == 0.0 and float(np.sum(a.latents)) > 0
