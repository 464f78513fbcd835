from django.contrib import admin
from django.urls import path

from tests.testapp import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("async/send/", views.send_async),
    path("async/write-and-send/", views.write_and_send),
    path("async/send-sync/", views.send_sync),
]
