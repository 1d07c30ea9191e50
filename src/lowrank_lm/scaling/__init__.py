"""Scaling studies: sweeps of runs, power-law fits of loss against compute, the paper's points, reports.

``sweep`` expands one YAML file into runs and executes them; ``table`` reads and writes the results
table both share; ``fit`` and ``compare`` fit and compare the curves; ``paper_data`` holds the paper's
published points; ``plots`` and ``report`` render the outcome. Nothing here imports torch or scipy at
module level, so ``lowrank-lm --help`` stays fast.
"""
