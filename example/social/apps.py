from django.apps import AppConfig


class SocialConfig(AppConfig):
    name = "social"

    def ready(self):
        # Connecting receivers is an import side effect, as with Django's @receiver.
        from . import receivers  # noqa: F401
