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


def descendants(pid):
    """PIDs of every process below `pid` (read from /proc, so it works without psutil)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(predicate, timeout, interval=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def title_of(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def find_titled(root_pid, title):
    """PIDs below `root_pid` whose process title (set with setproctitle) is `title`."""
    return [pid for pid in descendants(root_pid) if title_of(pid) == title and alive(pid)]
