"""Soak test (not part of CI): train for a while, kill a random worker every so often, then check the run.

    python -m benchmarks.soak --minutes 20 --kill-every 60

Checks that frames kept increasing, that resident memory per process stayed flat (prints the slope),
that no process is left after Ctrl-C, and that the final checkpoint loads and evaluates.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from checkpoint import load_checkpoint
from cli import Parser, add_run_flags
from metrics import read_progress
from proctree import alive, descendants, title_of
from utils import safe_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the toolkit, where main.py is


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def slope_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per hour."""
    if len(samples) < 3:
        return 0.0
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_m = sum(m for _, m in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    return 3600 * sum((t - mean_t) * (m - mean_m) for t, m in samples) / var if var else 0.0


def latest_frames(progress_path: str) -> int | None:
    progress = read_progress(progress_path)
    return progress[-1]["frames"] if progress else None


def main() -> int:
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=20)
    p.add_argument("--kill-every", type=float, default=60, help="seconds between kill -9 of a random worker")
    add_run_flags(p, gpus=False)
    p.add_argument("--out", default=None, help="directory for logs, checkpoints and soak.json (default: a temp dir)")
    args = p.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="soak-")
    logs, models = os.path.join(out, "logs"), os.path.join(out, "models")
    progress_path = os.path.join(logs, f"{safe_name(args.env)}_progress.jsonl")
    cmd = [
        sys.executable,
        "main.py",
        "--env",
        args.env,
        "--workers",
        str(args.workers),
        "--max-restarts",
        "100000",
        "--progress-interval",
        "5",
        "--log-dir",
        logs,
        "--save-model-dir",
        models,
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    print(f"soak: {' '.join(cmd)}\nsoak: output in {out}", flush=True)
    start = time.time()
    memory: dict[int, list[tuple[float, float]]] = {}
    titles: dict[int, str] = {}
    frames_series: list[tuple[float, int]] = []
    kills, seen = [], set()
    next_kill = start + args.kill_every
    while time.time() - start < args.minutes * 60 and proc.poll() is None:
        time.sleep(5)
        now = time.time() - start
        for pid in [proc.pid, *descendants(proc.pid)]:
            mb = rss_mb(pid)
            if mb is not None and alive(pid):
                seen.add(pid)
                titles[pid] = title_of(pid) if pid != proc.pid else "a3c main"  # set by the child once it runs
                memory.setdefault(pid, []).append((now, mb))
        frames = latest_frames(progress_path)
        if frames is not None:
            frames_series.append((now, frames))
        if time.time() >= next_kill:
            workers = [pid for pid in descendants(proc.pid) if title_of(pid).startswith("a3c train") and alive(pid)]
            if workers:
                victim = random.choice(workers)
                kills.append((round(now), title_of(victim)))
                os.kill(victim, signal.SIGKILL)
            next_kill += args.kill_every
        print(f"soak: {now / 60:5.1f} min, frames {frames}, kills {len(kills)}", flush=True)
    running_before_stop = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    try:
        code = proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code = "hung"
    time.sleep(1)
    orphans = [pid for pid in running_before_stop if alive(pid)]
    ckpt_path = os.path.join(models, f"{safe_name(args.env)}.dat")
    ckpt = load_checkpoint(ckpt_path)
    evaluation = subprocess.run(
        [
            sys.executable,
            "gym_eval.py",
            "--env",
            args.env,
            "--model",
            ckpt_path,
            "--num-episodes",
            "1",
            "--results",
            os.path.join(out, "eval.json"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    minute_gains = []
    for t0 in range(0, int(frames_series[-1][0]) - 60, 60) if frames_series else []:
        window = [f for t, f in frames_series if t0 <= t <= t0 + 60]
        minute_gains.append(window[-1] - window[0] if len(window) > 1 else 0)
    by_role: dict[str, list[float]] = {}
    for pid, samples in memory.items():
        # the second half of each process's life: start-up and allocator warm-up are not growth
        steady = samples[len(samples) // 2 :]
        role = "train" if titles[pid].startswith("a3c train") else titles[pid]
        if len(steady) >= 6 and role in ("train", "a3c test", "a3c main"):
            by_role.setdefault(role, []).append(slope_per_hour(steady))
    report = {
        "minutes": round((time.time() - start) / 60, 1),
        "env": args.env,
        "workers": args.workers,
        "exit_code": code,
        "kills": len(kills),
        "processes_seen": len(seen),
        "orphans": orphans,
        "frames_final": ckpt.frames,
        "frames_increased_every_minute": all(g > 0 for g in minute_gains),
        "min_frames_per_minute": min(minute_gains) if minute_gains else None,
        "rss_mb_final": {titles[pid]: round(s[-1][1]) for pid, s in memory.items() if alive(pid) or pid == proc.pid},
        "rss_slope_mb_per_hour": {role: round(statistics.median(v), 2) for role, v in by_role.items()},
        "checkpoint_loads": True,
        "eval_exit_code": evaluation.returncode,
        "eval_summary": evaluation.stdout.strip().splitlines()[-2:] if evaluation.stdout else evaluation.stderr,
    }
    with open(os.path.join(out, "soak.json"), "w") as f:
        series = {f"{titles[pid]} ({pid})": samples for pid, samples in memory.items()}
        json.dump({**report, "rss_series_mb": series, "frames_series": frames_series, "kill_log": kills}, f)
    print(json.dumps(report, indent=2))
    ok = code == 0 and not orphans and report["frames_increased_every_minute"] and evaluation.returncode == 0
    print("soak: PASS" if ok else "soak: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
