"""Coalescing: the ``dedupe_key`` column and its partial unique index.

The index covers only rows that carry a key and are pending and never claimed
(``batch_attempt IS NULL``), so it stays the size of the coalescable backlog, and the
worker's updates (claim, retry, hand-back) never violate it: see queries.DEDUPE_CONFLICT.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("outbox", "0005_event_queue_ordering_key")]

    operations = [
        migrations.AddField(
            model_name="event",
            name="dedupe_key",
            field=models.CharField(
                blank=True,
                help_text="Not sent again while this is pending.",
                max_length=255,
                null=True,
            ),
        ),
        migrations.AddConstraint(
            model_name="event",
            constraint=models.UniqueConstraint(
                condition=models.Q(("batch_attempt__isnull", True), ("dedupe_key__isnull", False), ("status", "pending")),
                fields=("receiver", "dedupe_key"),
                name="outbox_event_dedupe",
            ),
        ),
    ]
