"""Settings read from the environment, with errors that name the variable and what is valid.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; a stray or mistyped value must stop a
run with one clear line (exit code 2), not a traceback from ``int()``.
"""

from __future__ import annotations

import os

__all__ = ["EnvError", "env_int", "shard_from_env", "local_rank"]


class EnvError(ValueError):
    """An environment variable with an unusable value."""


def env_int(name: str, default: int, minimum: int = 0) -> int:
    """``$name`` as an integer >= ``minimum`` (``default`` when unset or empty)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise EnvError(f"environment variable {name}={raw!r} is not an integer") from None
    if value < minimum:
        raise EnvError(f"environment variable {name}={value} must be >= {minimum}")
    return value


def shard_from_env() -> tuple[int, int]:
    """(rank, world size) from torchrun's ``RANK`` / ``WORLD_SIZE`` (0, 1 when not set)."""
    rank, world = env_int("RANK", 0), env_int("WORLD_SIZE", 1, minimum=1)
    if rank >= world:
        raise EnvError(f"environment variable RANK={rank} must be below WORLD_SIZE={world} "
                       "(ranks are 0 .. WORLD_SIZE - 1; unset both to run one process)")
    return rank, world


def local_rank() -> int:
    """This process's GPU index under torchrun (``LOCAL_RANK``, 0 when not set)."""
    return env_int("LOCAL_RANK", 0)
