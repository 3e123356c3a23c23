#!/usr/bin/env python3
"""Test worker: prints one line to stderr and exits 1 at once (restart/backoff tests)."""
import os
import sys

print(f"crash.py[{os.getpid()}]: crashing on purpose (worker {os.environ.get('SWARM_WORKER', '?')})",
      file=sys.stderr, flush=True)
sys.exit(1)
