"""``started_at``: when the last attempt's receiver started, for the admin dashboard.

Nullable and without a default, so adding it rewrites no row on PostgreSQL or SQLite; no
index: the dashboard reads it from rows it finds through ``outbox_event_finished``.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("outbox", "0006_event_dedupe_key")]

    operations = [
        migrations.AddField(
            model_name="event",
            name="started_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
    ]
