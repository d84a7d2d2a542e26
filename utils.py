"""What every part of the toolkit shares and that has no other home: the user-error type and names."""

from __future__ import annotations


class UsageError(Exception):
    """Bad input the user can fix; printed as one line, exit code 2, no traceback."""


def safe_name(env_id: str) -> str:
    """A file name for an env id: `ALE/Pong-v5` -> `ALE_Pong-v5`, `mod:Env-v0` -> `mod_Env-v0`."""
    return env_id.replace("/", "_").replace(":", "_").replace("\\", "_")


def first_line(error: BaseException) -> str:
    """An exception's first line, for a one-line message (its type where it has no text)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}h {seconds % 3600 // 60:02d}m {seconds % 60:02d}s"
