"""How a study runs: the up-front check, the runner and its workers, one objective call per trial (a
``dyt-lab fit`` process, forked warm or fresh), liveness (heartbeats, reaping, retries), replicated seeds,
and ``dyt-lab study confirm``.
"""
