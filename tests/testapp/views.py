"""Async views the tests drive with django.test.AsyncClient."""

from asgiref.sync import sync_to_async
from django.db import transaction
from django.http import HttpResponse

from outbox import SendFromAsyncContext

from .async_receivers import noticed
from .models import Call
from .signals import work


class Refused(Exception):
    pass


async def send_async(request):
    """``await signal.asend(...)``: the deferred receiver's row is written in autocommit."""
    await work.asend(sender=None, key=request.GET["key"])
    return HttpResponse("sent")


@sync_to_async
def _write_and_send(key: str, fail: bool) -> None:
    # The README's pattern: the writes and the send in one sync function, one transaction.
    with transaction.atomic():
        Call.objects.create(receiver="view", key=key, worker_pid=0)
        work.send(sender=None, key=key)
        noticed.send(sender=None, key=key)
        if fail:
            raise Refused(key)


async def write_and_send(request):
    try:
        await _write_and_send(request.GET["key"], "fail" in request.GET)
    except Refused:
        return HttpResponse("rolled back", status=409)
    return HttpResponse("committed")


async def send_sync(request):
    """The mistake: a sync send() from async code."""
    try:
        work.send(sender=None, key=request.GET["key"])
    except SendFromAsyncContext as exc:
        return HttpResponse(str(exc), status=500)
    return HttpResponse("sent")
