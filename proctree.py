"""A run's process tree, read from /proc (Linux; no psutil needed): the processes below a launcher, whether
they live, their titles (setproctitle names them "a3c train 3", "a3c test"). Tests and the soak use it."""

from __future__ import annotations

import os


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


def title_of(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def find_titled(root_pid, title):
    """PIDs below `root_pid` whose process title (set with setproctitle) is `title`."""
    return [pid for pid in descendants(root_pid) if title_of(pid) == title and alive(pid)]
