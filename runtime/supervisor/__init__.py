"""The supervisor of worker processes (its HTTP endpoints are :mod:`runtime.web`)."""

from runtime.supervisor.supervisor import Supervisor
from runtime.web.probes import Probe

__all__ = ["Probe", "Supervisor"]
