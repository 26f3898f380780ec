"""The errors of conversation sessions; they live in :mod:`runtime.errors`."""

from runtime.errors import SessionDataError, SessionError, SessionFenceError, SessionNotFound

__all__ = ["SessionDataError", "SessionError", "SessionFenceError", "SessionNotFound"]
