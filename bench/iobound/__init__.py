"""``make bench-io``: I/O-bound receivers (each waits 50 ms), ours beside what users pick instead.

2,000 events committed in one transaction, drained by one worker process at concurrency 1, 10,
50 and 100: ours (``run_outbox --concurrency N``, sync and ``async def`` receivers), Celery
(``delay_on_commit``, Redis broker; threads and prefork pools), procrastinate (``--concurrency``)
and django-q2 (a cluster of N workers). ``python -m bench.iobound --help`` for the options.
"""
