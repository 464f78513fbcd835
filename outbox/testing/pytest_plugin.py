"""The pytest plugin of django-signal-outbox: fixtures ``outbox_drain`` and ``outbox_sent``.

Registered through the ``pytest11`` entry point, so installing the package is enough. It
imports nothing of the outbox (nor the ORM) until a fixture is used: pytest loads plugins
before pytest-django has configured Django.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from outbox.testing import Ran, Sent


@pytest.fixture
def outbox_drain() -> Callable[..., list[Ran]]:
    """:func:`outbox.testing.drain`: call it to run the due events (database access is the
    test's to request, with ``django_db`` or the ``db`` fixture)."""
    from outbox.testing import drain

    return drain


@pytest.fixture
def outbox_sent(db: Any) -> Iterator[Sent]:
    """The events written during the test, decoded (:func:`outbox.testing.capture`).

    Requests pytest-django's ``db`` (which honours ``django_db(transaction=True)``)."""
    from outbox.testing import capture

    with capture() as sent:
        yield sent
