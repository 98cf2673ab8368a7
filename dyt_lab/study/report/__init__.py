"""``dyt-lab study report``: the tables, statistics and plots of a study, read from its storage and its
saved study.yaml. It never imports the engine: a report runs nothing.
"""
