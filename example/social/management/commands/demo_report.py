"""Print what the worker dispatched, and check the demo's promises."""

from django.core.management.base import BaseCommand, CommandError

from outbox.models import Event
from social.models import FollowStats, SentEmail

EXPECTED_EMAILS = [
    ("alice@social.example", "Welcome!"),
    ("bob@social.example", "Welcome!"),
    ("carol@social.example", "Welcome!"),
    ("bob@social.example", "alice followed you"),
    ("carol@social.example", "bob followed you"),
]
NEVER = [
    ("dave@social.example", "Welcome!", "dave's signup rolled back"),
    ("alice@social.example", "carol followed you", "carol's follow rolled back"),
    ("alice@social.example", "bob followed you", "bob's follow of alice was in a rolled-back savepoint"),
]


class Command(BaseCommand):
    help = "Report the demo's outcome; exit non-zero if a promise was broken."

    def handle(self, *args, **options):
        out, style = self.stdout, self.style
        out.write(style.MIGRATE_HEADING("3. What the outbox held and what became of it"))
        out.write(f"  {'id':>3}  {'receiver':<28} {'status':<8} {'tries':>5}  last error")
        for event in Event.objects.order_by("id"):
            receiver = event.receiver.rsplit(".", 1)[-1]
            error = event.last_error.splitlines()[0][:60] if event.last_error else ""
            out.write(f"  {event.id:>3}  {receiver:<28} {event.status:<8} {event.attempts:>5}  {error}")

        out.write(style.MIGRATE_HEADING("4. Emails the worker sent"))
        sent = list(SentEmail.objects.order_by("id"))
        for email in sent:
            out.write(f"  to {email.to:<22} {email.subject!r:<26} (worker pid {email.sent_by_pid})")
        out.write(style.MIGRATE_HEADING("5. Follower counts kept by the m2m_changed receiver"))
        for stats in FollowStats.objects.select_related("profile__user").order_by("profile__user__username"):
            out.write(f"  {stats.profile}: {stats.followers}")

        out.write(style.MIGRATE_HEADING("6. Checks"))
        problems = []
        pairs = [(e.to, e.subject) for e in sent]
        for to, subject, why in NEVER:
            ok = (to, subject) not in pairs
            problems += [] if ok else [f"{subject!r} was sent to {to}, but {why}"]
            out.write(f"  {'OK ' if ok else 'BAD'} nothing ran because {why}")
        for to, subject in EXPECTED_EMAILS:
            n = pairs.count((to, subject))
            problems += [] if n == 1 else [f"{subject!r} to {to} was sent {n} times"]
            out.write(f"  {'OK ' if n == 1 else 'BAD'} {subject!r} to {to} sent exactly once (sent {n})")
        retrying = Event.objects.exclude(status="done")
        ok = retrying.count() == 2 and all("erin@invalid" in e.last_error for e in retrying)
        problems += [] if ok else ["expected exactly erin's two events to be waiting, with their error"]
        out.write(f"  {'OK ' if ok else 'BAD'} erin's 2 events wait to retry, their error recorded")
        if problems:
            raise CommandError("; ".join(problems))
        out.write(style.SUCCESS("  Rolled-back work never ran; committed work ran exactly once."))
