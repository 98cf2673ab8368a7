"""How a study runs. ``runner.run_study`` is the whole command: ``prepare`` (the up-front checks of
``precheck``, then create, queue, retry), ``worker`` (one worker's loop of ask, run, tell), ``pool`` (several
workers and their GPUs); one trial is ``objective`` (a ``dyt-lab fit`` process, forked warm or started fresh
by ``launch``); ``liveness`` finds dead workers, ``replicates`` counts seeds and reruns, ``faults`` words every
fault; ``confirm``, ``sequential`` and ``holdout`` are the studies that measure a search's winners.
"""
