"""Queues and per-key ordering: the ``queue`` and ``ordering_key`` columns and their indexes.

``queue`` gets a database default as well as Django's, added by hand because Django 4.2
has no ``db_default``: a web server still running the code before this migration inserts
rows without the column, and they must land in the "default" queue. The same statement
suits PostgreSQL, SQLite (no table rebuild) and MySQL/MariaDB.
"""

from django.db import migrations, models

ADD_QUEUE = "ALTER TABLE outbox_event ADD COLUMN queue varchar(64) DEFAULT 'default' NOT NULL"
DROP_QUEUE = "ALTER TABLE outbox_event DROP COLUMN queue"


class Migration(migrations.Migration):
    dependencies = [("outbox", "0004_event_batch_attempt")]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.RunSQL(ADD_QUEUE, DROP_QUEUE, elidable=False)],
            state_operations=[
                migrations.AddField(
                    model_name="event",
                    name="queue",
                    field=models.CharField(default="default", help_text="Queue that runs it.", max_length=64),
                ),
            ],
        ),
        migrations.AddField(
            model_name="event",
            name="ordering_key",
            field=models.CharField(
                blank=True,
                help_text="Runs after the earlier events of its key.",
                max_length=255,
                null=True,
            ),
        ),
        migrations.AddIndex(
            model_name="event",
            index=models.Index(
                condition=models.Q(("status__in", ["pending", "running"])),
                fields=["queue", "available_at", "id"],
                name="outbox_event_queue_due",
            ),
        ),
        migrations.AddIndex(
            model_name="event",
            index=models.Index(
                condition=models.Q(
                    ("ordering_key__isnull", False), ("status__in", ["pending", "running", "failed"])
                ),
                fields=["receiver", "ordering_key", "id"],
                name="outbox_event_key",
            ),
        ),
    ]
