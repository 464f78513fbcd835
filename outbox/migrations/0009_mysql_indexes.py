"""MySQL and MariaDB: what the partial indexes of the other databases do, and key locks.

Neither engine has partial indexes, so Django leaves ``outbox_event_due``,
``outbox_event_queue_due``, ``outbox_event_key``, ``outbox_event_finished`` and the
``outbox_event_dedupe`` constraint out there (their ``condition`` cannot be written). Each
is replaced by an index over a stored generated column that is NULL where the partial
index has no entry: ranges that start above NULL skip finished rows as the partial index
does, and InnoDB's unique indexes allow any number of NULLs, which makes ``dedupe_slot``
unique among fresh rows only. Keys are compared as bytes (``VARBINARY``): the tables'
collations are often case- and trailing-space-insensitive, the other databases are not.

``payload`` becomes plain ``LONGTEXT`` (utf8mb4, binary collation) on both: on MySQL, the
binary ``JSON`` type sorts object keys (in an order its manual does not promise to keep
between releases) and stores numbers as doubles; on MariaDB, Django's JSON column is already
``LONGTEXT``, but its ``JSON_VALID`` check refuses nesting 32 levels deep, which the outbox
allows. The outbox writes valid JSON and delivers payloads exactly as it wrote them.

``outbox_key_lock`` is what PostgreSQL's advisory transaction locks do for senders of
ordering keys (queries._insert_mysql): one row per key hash, locked by an upsert until
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
# The payload as text (see the docstring): MySQL's JSON column, MariaDB's checked LONGTEXT.
_TEXT = "ALTER TABLE outbox_event MODIFY payload longtext CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL"
PAYLOAD_AS_TEXT = {"mysql": [_TEXT], "mariadb": [_TEXT]}  # MariaDB: a MODIFY drops a column's CHECK
PAYLOAD_AS_JSON = {
    "mysql": ["ALTER TABLE outbox_event MODIFY payload json NOT NULL"],
    "mariadb": [f"{_TEXT} CHECK (JSON_VALID(payload))"],
}
BACKWARDS = [
    "DROP TABLE outbox_key_lock",
    "DROP INDEX outbox_event_dedupe_my ON outbox_event",
    "DROP INDEX outbox_event_finished_my ON outbox_event",
    "DROP INDEX outbox_event_key_my ON outbox_event",
    "DROP INDEX outbox_event_queue_due_my ON outbox_event",
    "DROP INDEX outbox_event_due_my ON outbox_event",
    "ALTER TABLE outbox_event DROP COLUMN dedupe_slot, DROP COLUMN open_key, DROP COLUMN due_at",
]


def _run(statements, first=None, last=None):
    """Run ``statements`` on MySQL and MariaDB, after ``first`` and before ``last`` of each
    flavour ("mysql", "mariadb")."""

    def run(apps, schema_editor):
        connection = schema_editor.connection
        if connection.vendor != "mysql":
            return
        flavour = "mariadb" if connection.mysql_is_mariadb else "mysql"
        for statement in [*(first or {}).get(flavour, ()), *statements, *(last or {}).get(flavour, ())]:
            schema_editor.execute(statement)

    return run


class Migration(migrations.Migration):
    atomic = False  # DDL on MySQL commits anyway; Django refuses it inside a transaction
    dependencies = [("outbox", "0008_event_trace_context")]
    operations = [
        migrations.RunPython(
            _run(FORWARDS, first=PAYLOAD_AS_TEXT), _run(BACKWARDS, last=PAYLOAD_AS_JSON), elidable=False
        )
    ]
