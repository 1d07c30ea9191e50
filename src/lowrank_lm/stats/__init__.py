"""Statistics of a results table: power laws of loss against compute, joint L(N, D) laws, seeds, IsoFLOP.

``table`` reads and writes the results table (the launch package writes it, the verbs ``fit`` and ``plan``
read it); ``fit`` (loss against compute), ``joint``, ``shared`` and ``shared_joint`` fit the laws, all with
the one solver of ``multistart`` and the one parametric bootstrap of ``bootstrap``; ``seeds`` pools the noise
of repeated runs; ``compare`` and ``isoflop`` compare the curves; ``planner`` and ``multiplier_plan`` plan the
next runs; ``paper_data`` holds the paper's published points; ``plots`` and ``report`` render the outcome.
Nothing here knows the model or the trainer, and nothing imports torch or scipy at module level, so
``lowrank-lm --help`` stays fast.
"""
