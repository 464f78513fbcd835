"""pgqueuer worker factory (``pgq run bench.benchapp.pgq:main``), as its docs show."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg
from pgqueuer import PgQueuer
from pgqueuer.db import PsycopgDriver
from pgqueuer.models import Job

from . import probe


@asynccontextmanager
async def main() -> AsyncIterator[PgQueuer]:
    connection = await psycopg.AsyncConnection.connect(os.environ["PGQ_DSN"], autocommit=True)
    pgq = PgQueuer(PsycopgDriver(connection))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        pass

    @pgq.entrypoint("ping")
    async def ping(job: Job) -> None:
        probe.hit(int(job.payload))

    try:
        yield pgq
    finally:
        await connection.close()


if __name__ == "__main__":
    # What ``pgq run bench.benchapp.pgq:main`` does, through pgqueuer.run(): the 1.6.0 CLI
    # fails at start-up on its own default --log-level ('str' object has no attribute 'name').
    import asyncio

    import pgqueuer

    asyncio.run(pgqueuer.run("bench.benchapp.pgq:main"))
