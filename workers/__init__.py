"""Agent definitions run by the workers (the demo app and examples).

An app's agents live here or in any importable module; the supervisor is pointed at one with
``agents-worker run module:object``.
"""
