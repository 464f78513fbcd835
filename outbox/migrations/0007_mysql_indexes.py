"""MySQL and MariaDB: what the partial indexes of the other databases do, and key locks.

Neither engine has partial indexes, so Django leaves ``outbox_event_due``,
``outbox_event_queue_due``, ``outbox_event_key``, ``outbox_event_finished`` and the
``outbox_event_dedupe`` constraint out there (their ``condition`` cannot be written). Each
is replaced by an index over a stored generated column that is NULL where the partial
index has no entry: ranges that start above NULL skip finished rows as the partial index
does, and InnoDB's unique indexes allow any number of NULLs, which makes ``dedupe_slot``
unique among fresh rows only. Keys are compared as bytes (``VARBINARY``): the tables'
collations are often case- and trailing-space-insensitive, the other databases are not.

``outbox_key_lock`` is what PostgreSQL's advisory transaction locks do for senders of
ordering keys (queries.lock_keys_mysql): one row per key hash, locked by an upsert until
the sender's transaction ends.

A no-op on every other database.
"""

from django.db import migrations

FORWARDS = [
    "ALTER TABLE outbox_event "
    "ADD COLUMN due_at datetime(6) AS "
    "(CASE WHEN status IN ('pending', 'running') THEN available_at END) STORED, "
    "ADD COLUMN open_key varbinary(1020) AS "
    "(CASE WHEN status IN ('pending', 'running', 'failed') THEN CAST(ordering_key AS BINARY) END) STORED, "
    "ADD COLUMN dedupe_slot varbinary(1020) AS "
    "(CASE WHEN batch_attempt IS NULL AND status = 'pending' THEN CAST(dedupe_key AS BINARY) END) STORED",
    "CREATE INDEX outbox_event_due_my ON outbox_event (due_at, id)",
    "CREATE INDEX outbox_event_queue_due_my ON outbox_event (queue, due_at, id)",
    "CREATE INDEX outbox_event_key_my ON outbox_event (receiver, open_key, id)",
    "CREATE INDEX outbox_event_finished_my ON outbox_event (status, finished_at, id)",
    "CREATE UNIQUE INDEX outbox_event_dedupe_my ON outbox_event (receiver, dedupe_slot)",
    "CREATE TABLE outbox_key_lock (id bigint NOT NULL PRIMARY KEY) ENGINE=InnoDB",
]
BACKWARDS = [
    "DROP TABLE outbox_key_lock",
    "DROP INDEX outbox_event_dedupe_my ON outbox_event",
    "DROP INDEX outbox_event_finished_my ON outbox_event",
    "DROP INDEX outbox_event_key_my ON outbox_event",
    "DROP INDEX outbox_event_queue_due_my ON outbox_event",
    "DROP INDEX outbox_event_due_my ON outbox_event",
    "ALTER TABLE outbox_event DROP COLUMN dedupe_slot, DROP COLUMN open_key, DROP COLUMN due_at",
]


def _run(statements):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor != "mysql":
            return
        for statement in statements:
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    atomic = False  # DDL on MySQL commits anyway; Django refuses it inside a transaction
    dependencies = [("outbox", "0006_event_dedupe_key")]
    operations = [migrations.RunPython(_run(FORWARDS), _run(BACKWARDS), elidable=False)]
