"""Sweeps: one YAML file expanded into runs, and the runs launched, here or on a cluster.

``sweep_file`` reads the file and ``sweep`` expands it into runs; ``execute`` runs them on this machine and
keeps the results table (written with :mod:`lowrank_lm.stats.table`); ``cluster``, ``submit``, ``jobs`` and
``job_record`` hand them to submitit (Slurm or its local executor). The statistics of the results are
:mod:`lowrank_lm.stats`, which imports nothing from here.
"""
