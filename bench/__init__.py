"""vsmd's benchmark suite: ``python -m bench`` (full, ~20 min) or ``python -m bench --quick``.

Everything runs in one process tree on one private RabbitMQ node, side by side: vsmd with each
spawn strategy, supervisord supervising the same workload, and the floor (raw multiprocessing
with the forkserver start method). Results go to docs/benchmarks.md and docs/benchmarks.json.

Kept free of imports: ``python -m bench.child`` (the peers' child program) loads this package.
"""
