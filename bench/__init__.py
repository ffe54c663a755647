"""vsmd's benchmark suite: ``python -m bench`` (full, ~20 min) or ``python -m bench --quick``.

Everything runs in one process tree on one private RabbitMQ node, side by side: vsmd with each
spawn strategy, the floor (a plain pre-imported parent forking children that do a VSM's broker
work), multiprocessing's forkserver and supervisord. Results go to docs/benchmarks.md and
docs/benchmarks.json.

Kept free of imports: ``python -m bench.child`` (the peers' child program) loads this package.
"""
