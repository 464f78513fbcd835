"""The built wheel, installed into a fresh virtualenv, runs a new project: check, migrate, the
admin's pages, a deferred receiver through run_outbox. Nothing from this checkout is importable
there, so a file missing from the wheel (a template, a static file, a migration) fails here.

About a minute: it builds the wheel and installs Django into a new virtualenv (pip's cache, or
PyPI)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import django
import pytest

import outbox

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.packaging

# Environment of the processes: nothing that would import this checkout or its settings.
_ENV = {
    k: v
    for k, v in os.environ.items()
    if k not in {"PYTHONPATH", "DJANGO_SETTINGS_MODULE", "VIRTUAL_ENV", "DATABASE_URL", "PYTHONHOME"}
}
_ENV["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"


def _run(args: list[str | Path], cwd: Path, timeout: float = 300, **env: str) -> str:
    done = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env={**_ENV, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{output}"
    return output


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built now from a copy of the files a clone has (not dist/, which may be older than
    the sources; not this tree, whose egg-info setuptools would read back as a manifest)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "CHANGELOG.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "outbox", source / "outbox", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("dist")
    # sdist first, then the wheel from it, as `python -m build` and PyPI users get them.
    log = _run([sys.executable, "-m", "build", "--outdir", out, source], cwd=source)
    warnings = [
        line for line in log.splitlines() if "warning" in line.lower() and "byte-compiling" not in line
    ]
    assert not warnings, "the build warned:\n" + "\n".join(warnings)
    (built,) = out.glob("*.whl")
    assert built.name == f"django_signal_outbox-{outbox.__version__}-py3-none-any.whl"
    (sdist,) = out.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[-1] for name in tar.getnames()}
    assert {"LICENSE", "CHANGELOG.md", "README.md", "outbox/py.typed"} <= names
    with zipfile.ZipFile(built) as wheel_file:
        metadata = wheel_file.read(f"django_signal_outbox-{outbox.__version__}.dist-info/METADATA").decode()
    assert "License-Expression: BSD-3-Clause" in metadata
    assert "Requires-Dist: Django<7,>=4.2" in metadata
    return built


SETTINGS = """
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "packaging-test"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "outbox",
    "shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "mysite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"
USE_TZ = True
"""

URLS = """
from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
"""

SHOP_APPS = """
from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"

    def ready(self):
        from . import receivers  # noqa: F401
"""

SHOP_RECEIVERS = """
from pathlib import Path

from django.contrib.auth.models import User
from django.db.models.signals import post_save

import outbox

WELCOMED = Path(__file__).resolve().parent.parent / "welcomed.txt"


def created(sender, created, **kwargs):
    return created


@outbox.receiver(post_save, sender=User, when=created)
def welcome(sender, instance, created, **kwargs):
    with WELCOMED.open("a") as f:
        f.write(f"{instance.username} {outbox.current_event().attempt}\\n")
"""

# Run with manage.py shell: what the installed package holds, and its admin pages rendered.
PROBE = """
from pathlib import Path

import outbox
from django.contrib.auth.models import User
from django.contrib.staticfiles import finders
from django.template.loader import get_template
from django.test import Client
from django.test.utils import setup_test_environment

package = Path(outbox.__file__).parent
assert "site-packages" in package.parts, package
assert (package / "py.typed").is_file()
for name in ("change_list", "change_form", "dashboard", "pagination", "replay_confirmation"):
    get_template(f"admin/outbox/event/{name}.html")
for name in ("admin.css", "dashboard.css"):
    assert Path(finders.find(f"outbox/{name}")).is_relative_to(package), name

User.objects.create_superuser("admin", "admin@example.com", "pw")
setup_test_environment()
client = Client()
client.force_login(User.objects.get(username="admin"))
for url in ("/admin/outbox/event/", "/admin/outbox/event/dashboard/"):
    response = client.get(url)
    assert response.status_code == 200, (url, response.status_code)
print("probe ok", outbox.__version__)
"""


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())


def test_the_wheel_runs_a_new_project(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(
        [python, "-m", "pip", "install", "-q", f"Django=={django.__version__}", f"{wheel}"],
        cwd=tmp_path,
        timeout=600,
    )

    project = tmp_path / "project"
    _write(project / "mysite" / "__init__.py", "")
    _write(project / "mysite" / "settings.py", SETTINGS)
    _write(project / "mysite" / "urls.py", URLS)
    _write(project / "shop" / "__init__.py", "")
    _write(project / "shop" / "apps.py", SHOP_APPS)
    _write(project / "shop" / "receivers.py", SHOP_RECEIVERS)
    manage = [python, "-m", "django"]
    env = {"DJANGO_SETTINGS_MODULE": "mysite.settings", "PYTHONPATH": str(project)}

    _run([*manage, "check", "--fail-level", "WARNING"], cwd=project, **env)
    migrated = _run([*manage, "migrate", "-v", "1"], cwd=project, **env)
    for migration in sorted((ROOT / "outbox" / "migrations").glob("0*.py")):
        assert f"Applying outbox.{migration.stem}... OK" in migrated
    _run([*manage, "check", "--database", "default", "--fail-level", "WARNING"], cwd=project, **env)
    _run([*manage, "makemigrations", "--check", "--dry-run", "outbox"], cwd=project, **env)
    probe = _run([*manage, "shell", "-c", PROBE], cwd=project, **env)
    assert f"probe ok {outbox.__version__}" in probe

    # The superuser's post_save wrote an event; the installed worker runs it once.
    assert not (project / "welcomed.txt").exists()
    _run([*manage, "run_outbox", "--once"], cwd=project, **env)
    assert (project / "welcomed.txt").read_text() == "admin 1\n"
