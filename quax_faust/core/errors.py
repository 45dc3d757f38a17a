"""The one error family of quax-stream: every error a message or a stored value can cause.

A ``QuaxError`` carries a short ``reason`` tag (e.g. ``bad_magic``, ``inconsistent_file``,
``bad_table_value``): the agents turn any of them into a dead-letter record with that reason
(docs/wire-format.md, "Rejection reasons"), count it in ``quax_rejected_messages_total{reason}``
and go on. It is a ValueError, so code that checks input with ``except ValueError`` still sees it.
"""

from __future__ import annotations


class QuaxError(ValueError):
    """Bad input or state, with a short machine-readable ``reason`` and a message for a human."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
