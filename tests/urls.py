from django.contrib import admin
from django.urls import path

import outbox.metrics.views
from tests.testapp import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("outbox/metrics", outbox.metrics.views.metrics),
    path("async/send/", views.send_async),
    path("async/write-and-send/", views.write_and_send),
    path("async/send-sync/", views.send_sync),
]
