"""Receivers for the send-time options when=, delay= and dedupe_key= (tests/test_send_options.py).

Not connected on import: each test connects the ones it needs, with its options, and
disconnects them after, so the other tests' signals write the rows they always did.
"""

from .receivers import CALLS


def on_created(sender, instance, created, **kwargs):
    CALLS.append(("on_created", sender, {"name": instance.name, "created": created}))


def created_only(sender, created, **kwargs):
    """The when= of a post_save receiver that only cares about new rows."""
    return created


def on_added(sender, action, pk_set, **kwargs):
    CALLS.append(("on_added", sender, {"action": action, "pk_set": sorted(pk_set)}))


def post_add_only(sender, action, **kwargs):
    """The when= of an m2m_changed receiver that only cares about additions, once each."""
    return action == "post_add"


def gated(sender, **kwargs):
    CALLS.append(("gated", sender, kwargs))


def ungated(sender, **kwargs):
    CALLS.append(("ungated", sender, kwargs))


def go(sender, go=True, **kwargs):
    return go


def broken_predicate(sender, **kwargs):
    raise LookupError("the predicate's own bug")


def reminder(sender, **kwargs):
    CALLS.append(("reminder", sender, kwargs))


def keyed_reminder(sender, **kwargs):
    CALLS.append(("keyed_reminder", sender, kwargs))


def by_product(sender, product=None, **kwargs):
    """The ordering or dedupe key: one product."""
    return product


def reindex(sender, product=None, **kwargs):
    CALLS.append(("reindex", sender, {"product": product}))


def reindex_too(sender, product=None, **kwargs):
    CALLS.append(("reindex_too", sender, {"product": product}))


def sync_account(sender, product=None, **kwargs):
    CALLS.append(("sync_account", sender, {"product": product}))
