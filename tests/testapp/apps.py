import os

from django.apps import AppConfig


class TestAppConfig(AppConfig):
    name = "tests.testapp"
    label = "testapp"

    def ready(self):
        from . import async_receivers, atomic_receivers, faults, receivers, routed, steering  # noqa: F401

        if os.environ.get("OUTBOX_TEST_SLOW_RECEIVERS") == "1":
            from . import slow_receivers

            slow_receivers.connect()
        from . import observed  # noqa: F401 - the observability tests' receivers
