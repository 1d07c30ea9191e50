"""One module per ``lowrank-lm`` verb: ``add_arguments(parser)`` and ``run(args)``."""
