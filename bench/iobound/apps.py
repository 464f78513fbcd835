from __future__ import annotations

from django.apps import AppConfig


class IOBoundConfig(AppConfig):
    name = "bench.iobound"
    label = "iobound"

    def ready(self) -> None:
        from . import ours  # noqa: F401 - connects our deferred receivers
