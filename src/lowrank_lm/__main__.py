"""``python -m lowrank_lm`` is the same as the ``lowrank-lm`` command (torchrun uses it too)."""

from lowrank_lm.cli import main

if __name__ == "__main__":
    main()
