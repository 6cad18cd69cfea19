"""InvalidLoginPolicy: block the guessing address, never the account.

(Being built: see the InvalidLoginFilter issue.)
"""

from __future__ import annotations

from .base import Policy

__all__ = ["InvalidLoginPolicy"]


class InvalidLoginPolicy(Policy):
    """Blocks an address after repeated failed logins."""

    kind = "login"
    default_on_store_error = "open"
