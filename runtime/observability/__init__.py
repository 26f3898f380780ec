"""Traces, metrics and the run lifecycle feed, written to Redis off the agent's event loop.

Importing this package loads nothing heavy: :mod:`runtime.observability.tracing` (the SDK
``TracingProcessor``) imports the Agents SDK and is imported only by its users.
"""
