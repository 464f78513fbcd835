"""Helpers for testing code that sends to outbox receivers, and the receivers themselves.

- :func:`drain` runs the due events in the test's process (``TestCase`` included) and, by
  default, raises a receiver's exception so the test fails with its traceback;
- :func:`capture` lists the events a block wrote, decoded, without running them;
- :mod:`outbox.testing.pytest_plugin`, loaded by pytest on its own, gives the fixtures
  ``outbox_drain`` and ``outbox_sent``.

Nothing here changes settings, loggers or the receiver registry.
"""

from __future__ import annotations

from .capturing import Sent, SentEvent, capture
from .draining import DrainLimitExceeded, Ran, drain

__all__ = ["DrainLimitExceeded", "Ran", "Sent", "SentEvent", "capture", "drain"]
