#!/usr/bin/env python
"""The demo site's manage.py."""

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # Run from a checkout without installing: the outbox package sits one level up.
    sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
