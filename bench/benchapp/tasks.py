"""procrastinate tasks (autodiscovered module) and Django tasks for django-tasks-db."""

from __future__ import annotations

from django.tasks import task
from procrastinate.contrib.django import app

from . import probe


@app.task(name="noop")
def procrastinate_noop(item_id):
    pass


@app.task(name="ping")
def procrastinate_ping(n):
    probe.hit(n)


@task
def django_noop(item_id):
    pass


@task
def django_ping(n):
    probe.hit(n)
