"""Admins for Person and Keyed, so that the outbox admin can link payload references to them."""

from django.contrib import admin

from .models import Keyed, Person

admin.site.register(Person)
admin.site.register(Keyed)
