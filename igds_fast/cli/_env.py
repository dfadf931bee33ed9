"""Process settings the command line fixes before torch (and its OpenMP runtime) loads.

OpenMP threads that busy-wait between parallel regions (the default "active" policy) collapse
when the cores are shared: on a 2-core machine with one other busy process, the default
``distill`` of one class took 128 s with 2 active threads, 25 s with ``OMP_WAIT_POLICY=PASSIVE``
and 23 s with ``--threads 1``. So the CLI waits passively unless the user chose a policy.
"""

from __future__ import annotations

import os
import sys

# OpenMP reads the policy once, when torch loads it: True here means the setting came too late.
TORCH_WAS_LOADED = "torch" in sys.modules
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
