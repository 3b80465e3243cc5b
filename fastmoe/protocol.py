"""Deprecated: the protocol is split by side. What runs on a machine is in
:mod:`fastmoe.machine` (:func:`~fastmoe.machine.fit_local`,
:func:`~fastmoe.machine.recheck_local`,
:func:`~fastmoe.machine.round_statistics`); what runs on the server is in
:mod:`fastmoe.server` (:func:`~fastmoe.server.aggregate_messages`,
:func:`~fastmoe.server.read_messages`, :func:`~fastmoe.server.refine_step`
and the rounds). Importing a name from here still works and warns once with
its new home; this module goes in the release after 0.1.
"""

from __future__ import annotations

import importlib
import warnings

__all__: list[str] = []

_MACHINE = ("SUPPORTS", "fit_local", "local_starts", "recheck_local", "round_statistics",
            "RoundStatistics", "LOCAL_GATE_PENALTY")
_SERVER = ("SUPPORT_PER_PARAMETER", "MIN_SUPPORT", "PLAUSIBLE_N_RATIO", "ROBUST_FACTOR",
           "MAX_TOTAL_SUPPORT_BYTES", "support_size", "pooled_support", "support_parts",
           "read_messages", "implausible_sizes", "inconsistent_machines", "capped_weights",
           "aggregate_messages", "refine_step")


def __getattr__(name: str):
    side = "machine" if name in _MACHINE else "server" if name in _SERVER else None
    if side is None:
        raise AttributeError(f"module 'fastmoe.protocol' has no attribute {name!r}")
    warnings.warn(f"fastmoe.protocol.{name} moved to fastmoe.{side}.{name}; import it from "
                  "there (fastmoe.protocol goes in the next release).", DeprecationWarning,
                  stacklevel=2)
    return getattr(importlib.import_module(f"fastmoe.{side}"), name)
