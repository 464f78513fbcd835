"""The admin dashboard: throughput, latency, backlog and receivers, drawn as SVG.

:mod:`.queries` computes the figures from the events table (through its indexes),
:mod:`.charts` draws them, :mod:`.views` serves the page in the outbox admin.
"""
