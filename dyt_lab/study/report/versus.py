"""TRANSITIONAL: ``study compare``'s old home, kept only because dyt_lab/study/cli.py imports ``compare`` from here.

Its home is ``compare.py``; once cli.py imports ``from dyt_lab.study.report.compare import compare``, delete this file.
"""

from dyt_lab.study.report.compare import compare  # noqa: F401
