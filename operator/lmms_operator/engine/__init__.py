"""The generic engine: a work queue keyed by object, its timers and its threads. It holds
the machinery of a controller and none of its decisions, in the shape of client-go's
rate-limited, delaying work queue and controller-runtime's Reconciler: the caller gives
a pass, ``reconcile(key, periodic) -> float | None``, and the engine decides when it runs.

What it guarantees:

- **One pass at a time per key.** A key added while its pass runs is marked dirty and
  runs once more when that pass ends, never beside it. A key added while its pass waits
  for a thread is absorbed by that pass, which has not read anything yet.
- **Debounce.** A key already waiting keeps the earlier of its due times, so a burst of
  adds becomes one pass. Whether any of them was periodic (a resync) is kept (an OR) and
  told to the pass.
- **Order.** Due keys are dispatched in the order of their due times. Beyond that, passes
  over different keys run in any order, in parallel on their pool.
- **Backoff.** A pass that raises is retried after ``base * 2**(n-1)`` seconds, at most
  ``cap`` (n: its failures in a row). Until then adds do not run it sooner: a failing
  object is retried on its backoff, not on every event and every resync. A pass that
  returns resets the count; so does ``forget`` (the object changed).
- **Requeue.** A pass may return a number of seconds after which it runs again (it waits
  for something that sends no event); an add runs it sooner.
- **Resync.** Every ``resync_interval`` seconds, every key from ``keys()`` is added with
  ``periodic=True``. A key whose pass is slow is marked dirty, not stacked.
- **Failures stay contained.** A pass's exception is logged and becomes its backoff; an
  ``every`` function's exception is logged and its loop goes on. Neither ends a thread or
  a loop.
- **Stop.** ``stop()`` cancels the timers, dispatches nothing more and shuts the pools down
  without waiting for the passes queued on them; a pass already running ends on its
  thread. It may be called twice.

What it does not know: what a key is (any hashable value: a uid, a name), what a pass does,
or which pool a key belongs on (``pool_of``); nothing of EvalRuns, Kubernetes or Kopf. It
keeps no object: a pass reads the current state itself, so it sees every change made
before it started. Time comes from ``clock.Clock``: a test gives a fake one, moves it on,
and calls ``run_due()``, with no sleeps and no real timers.

The parts: ``workqueue`` holds the state, with no threads and no event loop (``WorkQueue``,
``Backoff``); ``driver`` runs it (``Engine``, its pools, its timers).
"""

from .driver import Engine, InlineExecutor, threads
from .workqueue import Backoff, WorkQueue

__all__ = ["Backoff", "Engine", "InlineExecutor", "WorkQueue", "threads"]
