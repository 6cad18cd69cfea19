"""The three rule sets, sans-IO: given a request, return a verdict."""

from __future__ import annotations

from .base import Policy
from .device import DeviceJailPolicy
from .dos import DosPolicy
from .login import InvalidLoginPolicy, Outcome

__all__ = ["DeviceJailPolicy", "DosPolicy", "InvalidLoginPolicy", "Outcome", "Policy"]
