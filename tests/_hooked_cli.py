"""``python tests/_hooked_cli.py ARGS...`` runs ``fewshot-bench ARGS...`` with test-only hooks.

Used by ``test_interrupt.py`` to make real processes slow, observable and killable at a chosen
moment without any test switch in the package itself. Environment variables:

- ``FSB_TEST_BATCH_LOG``: append ``<pid> <batch size>`` to this file for every batch the eval
  transform sees (one extraction of N images with batch size B writes ceil(N / B) lines);
- ``FSB_TEST_BATCH_DELAY``: seconds to sleep per batch;
- ``FSB_TEST_HOLD``: before the first batch, create ``<it>.waiting`` and wait until it exists;
- ``FSB_TEST_PAUSE_WRITE`` + ``FSB_TEST_PAUSED``: when a file whose path contains the first is
  fsync'ed (its bytes are written, it is not yet renamed into place), write its path to the second
  and sleep for an hour (the test kills the process there).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from fewshot_bench.cli import main
from fewshot_bench.transforms import EvalTransform

_log = os.environ.get("FSB_TEST_BATCH_LOG")
_delay = float(os.environ.get("FSB_TEST_BATCH_DELAY", "0"))
_hold = os.environ.get("FSB_TEST_HOLD")
_pause = os.environ.get("FSB_TEST_PAUSE_WRITE")
_call = EvalTransform.__call__


def _hooked_call(self, images):
    global _hold
    if _hold:
        Path(_hold + ".waiting").touch()
        while not os.path.exists(_hold):
            time.sleep(0.05)
        _hold = None
    if _log:
        with open(_log, "a") as f:
            f.write(f"{os.getpid()} {len(images)}\n")
    if _delay:
        time.sleep(_delay)
    return _call(self, images)


EvalTransform.__call__ = _hooked_call

if _pause:
    _fsync = os.fsync

    def _paused_fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if _pause in target:
            Path(os.environ["FSB_TEST_PAUSED"]).write_text(target)
            time.sleep(3600)
        return _fsync(fd)

    os.fsync = _paused_fsync

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
