"""What runs inside a trial's own ``dyt-lab fit`` process: the pruning callback and the protocol it shares
with the worker (the binding, the result file, the record's attribute names). It imports no engine code,
so a trial's start-up pays for nothing it does not use.
"""
