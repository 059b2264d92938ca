"""Processes: one child (``child``), is it ready (``readiness``), the public sockets (``listener``),
which release is live and how a new one replaces it (``release``), nothing left behind (``guard``, ``reaper``)."""
