"""builtin_interfaces/Time <-> integer nanoseconds (no rclpy, no torch: light programs such as
``dsac_replay`` import it alone; `dsac_ros.ros.messages` re-exports both)."""

from __future__ import annotations


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int, stamp) -> None:
    """Writes integer nanoseconds into a builtin_interfaces/Time in place."""
    stamp.sec = int(ns // 1_000_000_000)
    stamp.nanosec = int(ns % 1_000_000_000)
