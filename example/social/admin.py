from django.contrib import admin

from .models import FollowStats, Profile, SentEmail

admin.site.register(Profile)
admin.site.register(FollowStats)
admin.site.register(SentEmail, list_display=("to", "subject", "sent_by_pid", "sent_at"))
