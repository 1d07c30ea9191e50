"""The ``trust_remote_code`` files copied next to an exported structured model.

They import only torch and transformers, never lowrank_lm: the exported folder must load where this
project is not installed. They are a compact re-expression of :mod:`lowrank_lm.model`, with the same
parameter names, so export writes our weights unchanged under a ``model.`` prefix.
"""
