"""Fault hooks for tests that run the real CLI in a subprocess (on PYTHONPATH only there).

ALIGN_TEST_FAULTS holds JSON:
  {"enospc": "<glob>"}   os.fsync on a file whose name matches raises ENOSPC (disk full), the way
                         a full disk surfaces when data is flushed;
  {"slow_step": seconds, "progress": "<file>"}  each training micro-batch appends its step to
                         <file> and then sleeps, so a test can SIGKILL inside a known step
                         (with "hold": "<file>", it first waits until that file exists);
  {"slow_score": seconds, "calls": "<file>"}  each reward call appends its prompts to <file>
                         and then sleeps (counts the work, leaves time to kill).
"""

import json
import os

_faults = json.loads(os.environ.get("ALIGN_TEST_FAULTS") or "{}")

if "enospc" in _faults:
    import errno
    import fnmatch

    _fsync = os.fsync

    def _full_disk_fsync(fd):
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if fnmatch.fnmatch(name, _faults["enospc"]):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _fsync(fd)

    os.fsync = _full_disk_fsync

if "slow_step" in _faults:
    import time

    import align.train.trainer

    _logps = align.train.trainer.Trainer._sequence_logps

    def _slow_logps(self, *args, **kwargs):
        with open(_faults["progress"], "a") as f:
            f.write(f"{self.step + 1}\n")
        while _faults.get("hold") and not os.path.exists(_faults["hold"]):
            time.sleep(0.02)
        time.sleep(_faults["slow_step"])
        return _logps(self, *args, **kwargs)

    align.train.trainer.Trainer._sequence_logps = _slow_logps

if "slow_score" in _faults:
    import time

    import align.rewards

    _score = align.rewards.Scorer.__call__

    def _slow_score(self, prompts, completions, *args, **kwargs):
        with open(_faults["calls"], "a") as f:
            f.write(json.dumps([p[-1]["content"] for p in prompts]) + "\n")
        time.sleep(_faults["slow_score"])
        return _score(self, prompts, completions, *args, **kwargs)

    align.rewards.Scorer.__call__ = _slow_score
