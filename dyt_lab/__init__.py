"""dyt_lab."""
