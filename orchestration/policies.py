"""How steps share the machine and survive a hiccup: the training pool and the I/O retry policy.

* ``TRAINING_POOL``: every training asset (orchestration/lifecycle.py) claims a slot of this
  Dagster concurrency pool. The instance (``deploy/dagster/<mode>/dagster.yaml``,
  ``concurrency: pools: default_limit: 1``) gives it one slot, so two trainings never run at the
  same time on the same cores, whatever run or Celery worker they belong to.
* ``IO_RETRY``: steps whose work is reading the landing zone or writing to the MLflow registry
  (a network filesystem, an object store, a database that restarts) retry with exponential
  backoff. A failure that a retry cannot fix raises ``dg.Failure(allow_retries=False)``, so a
  wrong file fails at once with its message instead of three times later.
"""

import dagster as dg

TRAINING_POOL = "training"

IO_RETRY = dg.RetryPolicy(max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
