"""The supervisor of worker processes and its health endpoint."""

from runtime.supervisor.health import HealthServer, Probe
from runtime.supervisor.supervisor import Supervisor

__all__ = ["HealthServer", "Probe", "Supervisor"]
