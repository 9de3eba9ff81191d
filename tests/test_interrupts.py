"""``errors.interrupts_deferred``: Ctrl-C held until a block (an orbax checkpoint write) ends,
then delivered as it would have been; the CLI's Ctrl-C exit is in tests/test_resume_cli.py."""

import os
import signal
import threading
import time

import pytest

from mgan_jax.errors import interrupts_deferred


@pytest.fixture(autouse=True)
def python_handles_sigint():
  """Python's own Ctrl-C handler, also where the suite runs with SIGINT ignored."""
  before = signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, before)


def _interrupt_self():
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(0.05)          # the signal is handled by now


def test_an_interrupt_in_the_block_arrives_after_it():
  before = signal.getsignal(signal.SIGINT)
  done = []
  with pytest.raises(KeyboardInterrupt):
    with interrupts_deferred():
      _interrupt_self()
      done.append("rest of the block")
  assert done == ["rest of the block"]
  assert signal.getsignal(signal.SIGINT) is before


def test_no_interrupt_nothing_raised_and_outside_the_block_as_before():
  with interrupts_deferred():
    pass
  with pytest.raises(KeyboardInterrupt):
    _interrupt_self()


def test_a_custom_handler_gets_the_held_signal_once():
  got = []
  before = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
  try:
    with interrupts_deferred():
      _interrupt_self()
      _interrupt_self()
      assert got == []
    assert got == [signal.SIGINT]
  finally:
    signal.signal(signal.SIGINT, before)


def test_other_threads_run_the_block_unchanged():
  seen = []

  def work():
    with interrupts_deferred():
      seen.append(signal.getsignal(signal.SIGINT))

  t = threading.Thread(target=work)
  t.start()
  t.join()
  assert seen == [signal.getsignal(signal.SIGINT)]
