"""DeviceJailPolicy: jail runaway ActiveSync devices.

(Being built: see the DeviceJail issue.)
"""

from __future__ import annotations

from .base import Policy

__all__ = ["DeviceJailPolicy"]


class DeviceJailPolicy(Policy):
    """Jails an ActiveSync device that sends too many requests."""

    kind = "device"
