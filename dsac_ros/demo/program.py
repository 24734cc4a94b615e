"""The frame of the harness's small rclpy programs (player, robot simulator, bag replay)."""

from __future__ import annotations

from collections.abc import Callable
import sys

import rclpy


def run_program(name: str, body: Callable[[], str | None]) -> int:
    """rclpy.init, ``body()``, rclpy shutdown. Returns 0 (also on Ctrl-C), or 2 after printing
    ``name: <error>`` for a ValueError / OSError; a text ``body`` returns is printed to stderr."""
    rclpy.init()
    try:
        summary = body()
    except KeyboardInterrupt:
        return 0
    except (ValueError, OSError) as exc:
        print(f'{name}: {exc}', file=sys.stderr)
        return 2
    finally:
        rclpy.try_shutdown()
    if summary:
        print(f'{name}: {summary}', file=sys.stderr)
    return 0
