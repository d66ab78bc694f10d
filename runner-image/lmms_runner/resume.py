"""Resuming on a cache volume: what a killed attempt already answered is not asked again.

lmms-eval's response cache (``--use_cache DIR``) writes each attempt into
``DIR/runs/<id>/rank_<r>.db`` and merges it into ``DIR/cache.db`` only when the attempt
ends cleanly, and it looks answers up in ``cache.db`` alone. An attempt that was killed
(preemption, OOM, node loss) leaves its answers unmerged: this merges them, with
lmms-eval's own merge, before the next attempt starts.
"""

from __future__ import annotations

from pathlib import Path

#: Answers per chunk sent to the model and committed to the cache (lmms_eval_main; lmms-eval
#: alone stores a request type only once all its answers are in): a killed attempt
#: loses at most this many answers.
CHECKPOINT_INTERVAL = "8"
#: A chunk's requests go to the model together and the next chunk waits for the slowest
#: of them: against a model server that takes N requests at once, chunks of this many
#: times N keep it busy (a chunk of fewer than N would bound the requests in flight).
CHUNKS_PER_CONCURRENCY = 4


def checkpoint_interval(in_flight: int | None) -> str:
    """Answers per chunk: ``CHECKPOINT_INTERVAL``, or more against a model server that
    keeps ``in_flight`` requests in flight (``command.in_flight``)."""
    if in_flight is None:
        return CHECKPOINT_INTERVAL
    return str(max(int(CHECKPOINT_INTERVAL), CHUNKS_PER_CONCURRENCY * in_flight))


def merge_unfinished_attempts(cache_dir: Path) -> int:
    runs = cache_dir / "runs"
    if not runs.is_dir():
        return 0
    pending = [
        d
        for d in sorted(runs.iterdir())
        if d.is_dir() and not (d / ".merged").exists() and list(d.glob("rank_*.db"))
    ]
    if not pending:
        return 0
    from lmms_eval.caching.response_cache import ResponseCache  # only when resuming

    merged = 0
    for run in pending:
        merged += ResponseCache.merge_shards(
            [str(p) for p in sorted(run.glob("rank_*.db"))], str(cache_dir / "cache.db")
        )
        (run / ".merged").write_text("merged by lmms-runner before a restart\n")
    return merged
