"""The three rule sets, sans-IO: given a request, return a verdict.

The registry
============

:data:`FILTERS` is the one list of filter kinds, outermost first: the order in
which ``protect`` stacks them and a request meets them (``DosFilter``, then
``DeviceJail``, then ``InvalidLoginFilter`` next to the app).  Every other
place that needs the kinds reads it: the ``mailguard.toml`` tables
(:mod:`mailguard.config`), the adapters' classes by kind
(``mailguard.asgi.FILTER_CLASSES``, ``mailguard.wsgi.FILTER_CLASSES``), the
command line, the metrics and the demo.  A new filter is a new policy plus one
:class:`FilterKind` here (and its adapter class of the same name in
:mod:`mailguard.asgi` and :mod:`mailguard.wsgi`).

Options
=======

A policy's options are the keyword parameters of its ``__init__`` (typed, with
their defaults, checked in its body), documented by ``:param:`` lines in its
class docstring; its ``XxxOptions`` ``TypedDict`` lists the same keywords for
the adapters' ``**options``.  :func:`mailguard.options.declared` reads one
declaration per option from there (name, type, default, whether it is a
duration, doc); :mod:`mailguard.config` uses nothing else.  A bad value raises
a ``ValueError`` from :func:`mailguard.options.option_error`, which names the
option.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .base import Policy, PolicyHolder, PolicyOptions, RefusalHook, RefusalInfo
from .device import DeviceJailPolicy, DeviceOptions
from .dos import DosOptions, DosPolicy
from .login import InvalidLoginPolicy, LoginOptions, Outcome

__all__ = [
    "FILTERS",
    "KINDS",
    "POLICIES",
    "DeviceJailPolicy",
    "DeviceOptions",
    "DosOptions",
    "DosPolicy",
    "FilterKind",
    "InvalidLoginPolicy",
    "LoginOptions",
    "Outcome",
    "Policy",
    "PolicyHolder",
    "PolicyOptions",
    "RefusalHook",
    "RefusalInfo",
    "filter_kind",
]


@dataclass(frozen=True)
class FilterKind:
    """One kind of filter: its policy and the names it goes by.

    :ivar policy: the policy class; its ``kind`` (``"dos"``) is the filter's
        ``[table]`` in mailguard.toml, its default store namespace, the
        ``filter`` of its events and the ``kind`` of its blocks.
    :ivar adapter: the name of its class in :mod:`mailguard.asgi` and
        :mod:`mailguard.wsgi` (``"DosFilter"``).
    :ivar block_action: the event action that starts what it stops someone
        with (``"refused"``: a refusal episode; ``"jailed"``; ``"blocked"``).
    :ivar block_word: what those are called, plural (``"episodes"``,
        ``"jails"``, ``"blocks"``).
    """

    policy: type[Policy]
    adapter: str
    block_action: str
    block_word: str

    @property
    def kind(self) -> str:
        return self.policy.kind


FILTERS: tuple[FilterKind, ...] = (
    FilterKind(DosPolicy, "DosFilter", block_action="refused", block_word="episodes"),
    FilterKind(DeviceJailPolicy, "DeviceJail", block_action="jailed", block_word="jails"),
    FilterKind(
        InvalidLoginPolicy, "InvalidLoginFilter", block_action="blocked", block_word="blocks"
    ),
)
"""Every filter kind, outermost first: the order in which they see a request."""

KINDS: tuple[str, ...] = tuple(f.kind for f in FILTERS)
"""``("dos", "device", "login")``: the kinds, outermost first."""

POLICIES: Mapping[str, type[Policy]] = MappingProxyType({f.kind: f.policy for f in FILTERS})
"""The policy class of each kind."""

_BY_KIND: Mapping[str, FilterKind] = MappingProxyType({f.kind: f for f in FILTERS})


def filter_kind(kind: str) -> FilterKind:
    """The :class:`FilterKind` of ``kind``; ``KeyError`` when there is none."""
    return _BY_KIND[kind]
