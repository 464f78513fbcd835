"""System checks (``manage.py check``): misconfiguration caught before it loses events."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
from typing import TYPE_CHECKING, Any, cast

from django.apps import apps
from django.conf import settings as django_settings
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections

from .conf import DEFAULTS
from .limits import setting_problem
from .registry import registry

if TYPE_CHECKING:
    from django.db.backends.mysql.base import DatabaseWrapper as MySQLDatabaseWrapper

__all__ = [
    "check_database",
    "check_dispatcher",
    "check_installed",
    "check_migrations",
    "check_psycopg",
    "check_receivers_importable",
    "check_settings",
    "unapplied_migrations",
]


@register()
def check_installed(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """outbox.E001: the app is imported but not installed, so it has no table."""
    if apps.is_installed("outbox"):
        return []
    return [
        Error(
            "django-signal-outbox is imported but 'outbox' is not in INSTALLED_APPS.",
            hint="Add 'outbox' to INSTALLED_APPS and run 'manage.py migrate'.",
            id="outbox.E001",
        )
    ]


@register()
def check_psycopg(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """outbox.E002: a PostgreSQL database without psycopg 3, which LISTEN needs."""
    postgres = [
        alias
        for alias, conf in django_settings.DATABASES.items()
        if "postgresql" in conf.get("ENGINE", "") or "postgis" in conf.get("ENGINE", "")
    ]
    if not postgres or importlib.util.find_spec("psycopg") is not None:
        return []
    return [
        Error(
            f"Database {', '.join(map(repr, postgres))} is PostgreSQL but psycopg 3 is not "
            f"installed; the outbox worker needs it to LISTEN for new events.",
            hint='pip install "django-signal-outbox[postgres]", or run the worker with --no-listen.',
            id="outbox.E002",
        )
    ]


@register()
def check_receivers_importable(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """outbox.E003: a deferred receiver the worker could not find by its dotted path."""
    errors = []
    for path, spec in sorted(registry.receivers.items()):
        module_name, _, name = path.rpartition(".")
        try:
            found = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError) as exc:
            found, problem = None, f"importing it fails: {exc}"
        else:
            problem = "that name holds a different object (shadowed or rebound)"
        if found is spec.func or getattr(found, "__wrapped__", None) is spec.func:
            continue
        errors.append(
            Error(
                f"Deferred receiver {path} is not importable by its dotted path: {problem}.",
                hint="Connect only module-level functions whose name is not reassigned.",
                obj=spec.func,
                id="outbox.E003",
            )
        )
    return errors


@register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """outbox.E004/E005/E007: unknown or invalid OUTBOX settings, or an unknown DATABASE.

    E004 is a value of the wrong type (or not positive), E007 a value out of the range the
    outbox can hold (``outbox.limits``): each is refused again when the setting is read.
    """
    user = getattr(django_settings, "OUTBOX", None) or {}
    if not isinstance(user, dict):
        return [Error("The OUTBOX setting must be a dict.", hint="See docs/settings.md.", id="outbox.E004")]
    errors = []
    for key, value in user.items():
        if key not in DEFAULTS:
            close = difflib.get_close_matches(str(key), DEFAULTS, n=1)
            errors.append(
                Error(
                    f"OUTBOX[{key!r}] = {value!r} is not a setting of django-signal-outbox.",
                    hint=(f"Did you mean {close[0]!r}? " if close else "")
                    + f"Valid settings and their defaults: {', '.join(sorted(DEFAULTS))}.",
                    id="outbox.E004",
                )
            )
        elif problem := setting_problem(key, value):
            errors.append(Error(problem.msg, hint=problem.hint, id=problem.id))
    alias = user.get("DATABASE")
    if isinstance(alias, str) and alias not in django_settings.DATABASES:
        errors.append(
            Error(
                f"OUTBOX['DATABASE'] = {alias!r} is not a key of DATABASES.",
                hint="Name a database alias from DATABASES, or remove the setting.",
                id="outbox.E005",
            )
        )
    return errors


@register()
def check_dispatcher(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """outbox.E006: OUTBOX["DISPATCHER"] cannot be loaded, or what it relies on is missing.

    A dispatcher may have a ``check()`` method returning its own errors (the django-q2
    relay reports a missing or uninstalled ``django_q`` there).
    """
    from .dispatch import get_dispatcher

    user = getattr(django_settings, "OUTBOX", None) or {}
    path = user.get("DISPATCHER") if isinstance(user, dict) else None
    if not path or not isinstance(path, str):
        return []
    try:
        dispatcher = get_dispatcher(path)
    except ImproperlyConfigured as exc:
        return [
            Error(
                str(exc),
                hint="Name a dispatcher class or a module with a Dispatcher class, such as "
                "'outbox.dispatch.django_q2'; or remove the setting to run receivers in the worker.",
                id="outbox.E006",
            )
        ]
    check = getattr(dispatcher, "check", None)
    return list(check()) if check is not None else []


#: The oldest MySQL and MariaDB the outbox runs on: SELECT ... FOR UPDATE SKIP LOCKED, which
#: the claim needs, came in MySQL 8.0.1 and MariaDB 10.6.
MYSQL_MINIMUM = (8, 0, 1)
MARIADB_MINIMUM = (10, 6)
_SUPPORTED = "PostgreSQL, SQLite, MySQL 8.0.1+ or MariaDB 10.6+"


def database_problem(alias: str) -> Error | None:
    """outbox.E008 for database ``alias`` if the outbox cannot run on it, else None.

    MySQL and MariaDB are asked their version (one connection); an unreachable server is
    not reported here (the worker waits for it, and sends fail as any query would).
    """
    if alias not in django_settings.DATABASES:
        return None  # outbox.E005
    connection = connections[alias]
    vendor = connection.vendor
    if vendor in ("postgresql", "sqlite"):
        return None
    if vendor == "mysql":
        try:
            mysql = cast("MySQLDatabaseWrapper", connection)
            mariadb, version = mysql.mysql_is_mariadb, mysql.mysql_version
        except DatabaseError:
            return None
        name, minimum = ("MariaDB", MARIADB_MINIMUM) if mariadb else ("MySQL", MYSQL_MINIMUM)
        if version >= minimum:
            return None
        found = f"{name} {'.'.join(map(str, version))}"
        need = f"{name} {'.'.join(map(str, minimum))}"
        hint = (
            f"Upgrade to {need} or later (it has SELECT ... FOR UPDATE SKIP LOCKED, which the claim needs)."
        )
    else:
        found, hint = f"a {vendor!r} database", f"Put the outbox on {_SUPPORTED} (OUTBOX['DATABASE'])."
    return Error(
        f"The outbox database {alias!r} is {found}, which django-signal-outbox does not support: "
        f"sends could fail inside the sender's transaction and no worker could claim events.",
        hint=hint,
        id="outbox.E008",
    )


@register()
def check_database(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """outbox.E008: the outbox database is not one the outbox runs on (see :func:`database_problem`)."""
    from .conf import settings

    try:
        alias = settings.database
    except ImproperlyConfigured:
        return []  # outbox.E004/E005
    problem = database_problem(alias)
    return [problem] if problem else []


@register(Tags.database, deploy=True)
def check_migrations(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[Warning]:
    """outbox.W001: outbox migrations not applied (``check --deploy --database ALIAS``).

    A deploy check, so that ``migrate`` itself does not warn about what it is about to apply;
    ``run_outbox`` runs it at start and refuses to start on an unmigrated database.
    """
    warnings: list[Warning] = []
    if not apps.is_installed("outbox"):
        return warnings
    for alias in databases or []:
        try:
            unapplied = unapplied_migrations(alias)
        except DatabaseError:
            continue
        if unapplied:
            warnings.append(
                Warning(
                    f"Database {alias!r} has {unapplied} unapplied outbox migration(s); sends "
                    f"and the worker will fail until they are applied.",
                    hint=f"Run 'manage.py migrate outbox --database {alias}'.",
                    id="outbox.W001",
                )
            )
    return warnings


def unapplied_migrations(alias: str) -> int:
    """How many outbox migrations ``alias`` lacks; a ``DatabaseError`` if it cannot be read."""
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connections[alias])
    return len(executor.migration_plan(executor.loader.graph.leaf_nodes("outbox")))
