"""`flan-jax` in a subprocess for the training tests.

With KILL_DURING_SAVE_STEP=N the process SIGKILLs itself while checkpoint N is being written: after its
files are in orbax's temporary directory, before the rename that commits it.
"""

import os
import signal
import sys

if os.environ.get("KILL_DURING_SAVE_STEP"):
  from orbax.checkpoint._src.path import atomicity

  _finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def finalize(self, *args, **kwargs):
    if self.get_final().name == os.environ["KILL_DURING_SAVE_STEP"]:
      os.kill(os.getpid(), signal.SIGKILL)
    return await _finalize(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = finalize

from flan_jax import cli  # noqa: E402

sys.exit(cli.main(sys.argv[1:]))
