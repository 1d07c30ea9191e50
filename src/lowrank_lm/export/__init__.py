"""The model outside this project: Hugging Face export and the lm-evaluation-harness adapter.

Nothing here is imported by ``import lowrank_lm``; transformers and lm-eval are optional extras.
"""
