"""The worker side: the stream consumer and the worker process entry point."""

from runtime.worker.consumer import Worker
from runtime.worker.outcome import WorkerStats

__all__ = ["Worker", "WorkerStats"]
