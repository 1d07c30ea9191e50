"""The ``trust_remote_code`` wrapper copied next to an exported structured model.

``configuration_lowrank_lm.py`` and ``modeling_lowrank_lm.py`` import only torch and transformers and
their neighbours in the exported folder, never lowrank_lm: the folder must load where this project is not
installed. The wrapper is a compact re-expression of :mod:`lowrank_lm.model` around the structures' own
layer modules, which the exporter copies beside it with the ``structures_lowrank_lm.py`` it writes (see
:mod:`lowrank_lm.export.remote_code`); so the wrapper is loaded from an export, not imported from here.
"""
