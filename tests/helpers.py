"""Helpers for tests that drive the toolkit's programs as subprocesses."""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(script, *args, cwd=ROOT, timeout=120):
    """Run one of the toolkit's programs to completion; return the CompletedProcess."""
    return subprocess.run(
        [sys.executable, script, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def run_cli_each(script, arg_lists, timeout=120, parallel=2):
    """run_cli for each list of arguments, `parallel` at a time (a run that stops at bad input is mostly
    Python importing torch); the results in the lists' order."""
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda args: run_cli(script, *args, timeout=timeout), arg_lists))


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
