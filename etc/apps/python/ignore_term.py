#!/usr/bin/env python3
"""Test worker: serves fd 3 like server.py but ignores SIGTERM.

Stopping it takes swarmd's stop timeout and then SIGKILL. SIGINT still stops it.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server  # noqa: E402

if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    server.main(handle_term=False)
