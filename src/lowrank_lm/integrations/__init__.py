"""Structures inside other training stacks: torchtitan's model converter (:mod:`.torchtitan`) and the
tensor-parallel plan of structure factors (:mod:`.tensor_parallel`). Nothing here is imported by
``import lowrank_lm``; each module imports its stack when it is itself imported."""
