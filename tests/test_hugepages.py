"""The `flan-jax` command re-executes itself once with glibc's huge-page malloc, and that backs big arrays."""

import os
import subprocess
import sys

import pytest

from flan_jax import hugepages

pytestmark = pytest.mark.skipif(not hugepages._supported(), reason="needs Linux, glibc >= 2.35, THP 'madvise'")

# Mallocs and touches 256 MiB, as XLA's CPU buffers are (numpy asks for huge pages on its own: not a probe),
# then reports this process's anonymous huge pages.
ALLOCATE = """
import ctypes, os
from flan_jax import hugepages
print("before", os.getpid(), os.environ.get("GLIBC_TUNABLES"), flush=True)
hugepages.reexec_with_hugepages()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
buffer = libc.malloc(256 << 20)
ctypes.memset(buffer, 1, 256 << 20)
huge = [l for l in open("/proc/self/smaps_rollup") if l.startswith("AnonHugePages:")][0].split()[1]
print("after", os.getpid(), os.environ.get("GLIBC_TUNABLES"), int(huge) >> 10)
"""


def _run(code, **env):
  environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**environ, **env},
                       check=True)
  return [line.split() for line in out.stdout.splitlines()]


def test_reexec_backs_large_arrays_with_huge_pages():
  first, again, (after, same_pid, tunables, huge_mib) = _run(ALLOCATE)  # `again`: the re-executed process
  assert first[2] == "None" and again == ["before", first[1], "glibc.malloc.hugetlb=1"]
  assert (after, same_pid, tunables) == ("after", first[1], "glibc.malloc.hugetlb=1")
  assert int(huge_mib) >= 200  # of the 256 MiB array


def test_a_value_of_your_own_is_kept():
  lines = _run(ALLOCATE, GLIBC_TUNABLES="glibc.malloc.hugetlb=0")
  assert len(lines) == 2  # no re-exec
  assert lines[1][2] == "glibc.malloc.hugetlb=0" and int(lines[1][3]) < 16
  other = hugepages.environ_with_hugepages({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
  assert other["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


def test_the_command_runs_with_huge_pages():
  code = ("import os; from flan_jax import cli; print(os.getpid(), os.environ.get('GLIBC_TUNABLES'), flush=True); "
          "cli.run(['--help'])")
  lines = _run(code)
  assert lines[0][1] == "None" and lines[1][:2] == [lines[0][0], "glibc.malloc.hugetlb=1"]
  assert "usage:" in lines[2]
