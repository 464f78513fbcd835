import django.dispatch

followed = django.dispatch.Signal()
pinged = django.dispatch.Signal()
work = django.dispatch.Signal()
charged = django.dispatch.Signal()
queued = django.dispatch.Signal()
ordered = django.dispatch.Signal()
steered = django.dispatch.Signal()
