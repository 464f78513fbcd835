"""Vacuum the outbox table often on PostgreSQL.

Every event is inserted, updated two or three times and, eventually, pruned: a queue table
piles up dead tuples far faster than the default thresholds (20% of the table) expect.
Left alone it bloats, and the claim query reads dead index entries. These storage
parameters make autovacuum visit it after about 1% of its rows change.
"""

from django.db import migrations

SETTINGS = {
    "autovacuum_vacuum_scale_factor": "0.01",
    "autovacuum_vacuum_threshold": "1000",
    "autovacuum_analyze_scale_factor": "0.02",
    "autovacuum_vacuum_cost_delay": "1",
}


def _alter(apps, schema_editor, reset=False):
    if schema_editor.connection.vendor != "postgresql":
        return
    table = schema_editor.quote_name("outbox_event")
    if reset:
        schema_editor.execute(f"ALTER TABLE {table} RESET ({', '.join(SETTINGS)})")
    else:
        options = ", ".join(f"{key} = {value}" for key, value in SETTINGS.items())
        schema_editor.execute(f"ALTER TABLE {table} SET ({options})")


def forwards(apps, schema_editor):
    _alter(apps, schema_editor)


def backwards(apps, schema_editor):
    _alter(apps, schema_editor, reset=True)


class Migration(migrations.Migration):
    dependencies = [("outbox", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards, elidable=False)]
