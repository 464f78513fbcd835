"""An admin for Person, so that the outbox admin can link payload references to it."""

from django.contrib import admin

from .models import Person

admin.site.register(Person)
