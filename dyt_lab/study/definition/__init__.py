"""What a study is: the study file, its search space and design, where it is stored, its sampler and pruner.

Everything here is plain data and Optuna's own objects: the engine, a trial's process and the report
all read a study through it, and it imports none of them.
"""
