"""dyt_lab's tests, laid out as the package is (see conftest.py)."""
