"""``python -m dyt_lab`` is the ``dyt-lab`` command."""

from dyt_lab.cli import main

if __name__ == "__main__":
    main()
