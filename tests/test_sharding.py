"""Sharded batches: pure helpers in-process, and sharded == unsharded on 4 forced CPU devices.

The device test runs in a subprocess because the host device count must be set (XLA_FLAGS)
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

from mgan_jax import sharding
from mgan_jax.errors import UserError

ROOT = Path(__file__).resolve().parent.parent


def test_chunk_boundaries_are_a_function_of_the_settings():
  assert sharding.chunk_boundaries(10, 4, 3) == (3, 4, 6, 8, 9, 10)
  assert sharding.chunk_boundaries(10, 4, 0) == (4, 8, 10)
  assert sharding.chunk_boundaries(12, 100, 4) == (4, 8, 12)
  assert sharding.chunk_boundaries(0, 4, 2) == ()
  # a resumed run from any checkpoint boundary repeats the remaining chunks exactly
  full = sharding.chunk_boundaries(50, 7, 5)
  for k in (5, 10, 35):
    assert k in full
    assert tuple(b for b in full if b > k) == tuple(
        b for b in sharding.chunk_boundaries(50, 7, 5) if b > k)
  with pytest.raises(ValueError):
    sharding.chunk_boundaries(10, 0, 2)


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
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    sys.path.insert(0, sys.argv[1])
    import jax, numpy as np
    jax.config.update("jax_disable_most_optimizations", True)
    from jax.sharding import NamedSharding, PartitionSpec as P
    from mgan_jax import latents as L, objective as O, optimize as opt, sharding as S
    from mgan_jax.generators.pggan import PGGAN

    gen = PGGAN(resolution=8, latent_dim=8, channels=(8, 8))
    params = gen.init_params(jax.random.key(0))
    cfg = O.LossConfig(mse_weight=1.0, l1_weight=0.5, perceptual_weight=0.0)
    loss_fn = O.Objective(gen, method="multi_z", layer=2, config=cfg)
    ocfg = opt.OptimizerConfig(name="adam", lr=0.05)
    B, T = 6, 6
    imgs = jax.random.uniform(jax.random.key(1), (B, 1, 8, 8, 3), minval=-1, maxval=1)
    tgts = [O.make_target(imgs[i], None, config=cfg) for i in range(B)]
    lats = [L.init_latents(gen, params, jax.random.key(10 + i), method="multi_z", codes=3,
                           layer=2) for i in range(B)]
    stack = lambda trees: jax.tree.map(lambda *x: np.stack([np.asarray(v) for v in x]), *trees)
    lat_b, tgt_b = stack(lats), stack(tgts)
    args = (tgt_b, params, None)
    mesh4 = S.local_mesh()
    mesh1 = S.local_mesh(jax.devices()[:1])
    r4 = S.optimize_batch(loss_fn, lat_b, args, arg_axes=(0, None, None), optimizer=ocfg,
                          iterations=T, chunk=4, mesh=mesh4)
    r1 = S.optimize_batch(loss_fn, lat_b, args, arg_axes=(0, None, None), optimizer=ocfg,
                          iterations=T, chunk=4, mesh=mesh1)
    single = opt.optimize(loss_fn, lats[B - 1], (tgts[B - 1], params, None), optimizer=ocfg,
                          iterations=T, chunk=4)
    # the compiled 4-device program: each device holds 2 of the 8 padded images, no collective
    tx = opt.as_transformation(ocfg)
    lat_s, pad = S.shard_batch(lat_b, mesh4)
    st = jax.device_put(S.pad_batch(S.init_state(tx, lat_b), 8), NamedSharding(mesh4, P("data")))
    fn = S.batched_chunk(loss_fn, tx, 4, mesh4, (0, None, None))
    hlo = fn.lower(lat_s, st, (S.shard_batch(tgt_b, mesh4)[0], S.replicate(params, mesh4),
                               None)).compile().as_text()
    out_lat, out_st, losses = fn(lat_s, st, (S.shard_batch(tgt_b, mesh4)[0],
                                             S.replicate(params, mesh4), None))
    collectives = [w for w in ("all-reduce", "all-gather", "collective-permute", "all-to-all",
                               "reduce-scatter") if w in hlo]
    diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                            for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    print(json.dumps({
        "devices": len(jax.devices()), "pad4": r4.padding, "pad1": r1.padding,
        "shard_shape": [list(s.data.shape) for s in out_lat["z"].addressable_shards],
        "shard_devices": sorted(str(s.device) for s in out_lat["z"].addressable_shards),
        "loss_shape": list(r4.losses.shape), "lat_shape": list(r4.latents["z"].shape),
        "lat_diff": diff(r4.latents, r1.latents), "loss_diff": diff(r4.losses, r1.losses),
        "state_diff": diff(r4.opt_state, r1.opt_state),
        "single_lat_diff": diff(jax.tree.map(lambda x: x[B - 1], r4.latents), single.latents),
        "single_loss_diff": diff(r4.losses[B - 1], single.losses),
        "loss_drop": float(np.min(r4.losses[:, 0] - r4.losses[:, -1])),
        "distinct": bool(np.all(np.abs(np.diff(r4.latents["z"], axis=0)) .max() > 1e-3)),
        "collectives": collectives}))
""")


def test_sharded_batch_equals_unsharded_on_4_devices():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _DEVICE_SCRIPT, str(ROOT)], capture_output=True,
                        text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(proc.stdout.strip().splitlines()[-1])
  assert r["devices"] == 4
  assert r["pad4"] == 2 and r["pad1"] == 0            # batch 6 -> 8 on 4 devices
  assert r["shard_shape"] == [[2, 3, 8]] * 4          # 2 images per device
  assert len(set(r["shard_devices"])) == 4
  assert r["loss_shape"] == [6, 6] and r["lat_shape"] == [6, 3, 8]
  assert r["collectives"] == []                       # nothing crosses devices
  # sharded == unsharded (float32 round-off of differently batched convolutions at most)
  assert r["lat_diff"] < 1e-5 and r["loss_diff"] < 1e-5 and r["state_diff"] < 1e-5, r
  # and each image equals its own single-image run
  assert r["single_lat_diff"] < 1e-5 and r["single_loss_diff"] < 1e-5, r
  assert r["loss_drop"] > 0 and r["distinct"]
