"""Process settings the command line fixes before torch (and its OpenMP runtime) loads.

OpenMP threads that busy-wait between parallel regions (the default "active" policy) collapse
when the cores are shared: on a 2-core machine with one other busy process, the default
``distill`` of one class took 128 s with 2 active threads, 25 s with ``OMP_WAIT_POLICY=PASSIVE``
and 23 s with ``--threads 1``. So the CLI waits passively unless the user chose a policy.
"""

from __future__ import annotations

from ..api import wait_passively

# OpenMP reads the policy once, when torch loads it: True here means the setting came too late.
TORCH_WAS_LOADED = not wait_passively()
