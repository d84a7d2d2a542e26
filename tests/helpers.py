"""Helpers for tests that drive the toolkit's programs as subprocesses."""

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(script, *args, cwd=ROOT, timeout=120):
    """Run one of the toolkit's programs to completion; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, script, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def start_cli(script, *args, cwd=ROOT):
    return subprocess.Popen(
        [sys.executable, script, *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_for(predicate, timeout, interval=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False
