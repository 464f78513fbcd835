"""Long runs against a real PostgreSQL, outside the test collection: ``python -m stress.chaos``
(worker processes SIGKILLed at random, the server restarted) and ``python -m stress.scale``
(worker memory over many events). ``make chaos`` runs both at full size; ``tests/test_chaos.py``
and ``tests/test_scale.py`` run the same code at sizes that fit in the suite.

They use the test settings and app (``tests.settings``, ``tests.testapp``), so they live beside
``tests/``, not in ``bench/``, whose scripts measure speed with settings of their own."""
