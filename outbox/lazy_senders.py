"""Lazy senders of model signals: ``sender="app_label.ModelName"``, resolved as Django does.

Django's ``ModelSignal`` turns such a sender into the model class through
``apps.lazy_model_operation``: at once if the model is registered, else when it registers.
The registry does the same for its proxies, so that a receiver connected by label and one
connected by class share the proxy of that class (Django keeps one proxy per sender).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.db.models.signals import ModelSignal
from django.db.models.utils import make_model_tuple
from django.dispatch import Signal

from .exceptions import RegistrationError

if TYPE_CHECKING:
    from .registry import ReceiverSpec

__all__ = ["Pending", "model_key"]


def model_key(signal: Signal, sender: Any) -> tuple[str, str] | None:
    """``(app_label, model_name)`` for a model signal's lazy sender, else None.

    Only a ModelSignal resolves ``"app_label.ModelName"`` (``ModelSignal._lazy_method``); to
    any other signal a string sender is just a value that senders pass.
    """
    if not isinstance(signal, ModelSignal) or not isinstance(sender, str):
        return None
    try:
        return make_model_tuple(sender)
    except ValueError as exc:
        raise RegistrationError(str(exc)) from None


class Pending:
    """The lazy model operation that hands a lazy sender's receivers to the model's proxy.

    Django's check ``models.E022`` names what is pending on a model that never registers by
    this object's ``repr``, so that says which receivers wait for which sender.
    """

    __name__ = "deferred receivers"  # Django's lazy reference check reads __name__

    def __init__(
        self,
        signal: Signal,
        key: tuple[str, str],
        signal_name: str,
        hand_over: Callable[[Pending, Any], None],
    ) -> None:
        self.signal, self.key, self.signal_name = signal, key, signal_name
        self.hand_over = hand_over  # the registry's: adds the receivers to the model's proxy
        self.specs: dict[Any, ReceiverSpec] = {}

    def __call__(self, model: Any) -> None:
        self.hand_over(self, model)

    def __repr__(self) -> str:
        names = ", ".join(spec.path for spec in self.specs.values()) or "no receiver any more"
        return f"The deferred receivers ({names}) of {self.signal_name}"
