"""Efficiency benchmarks: the FFN block alone, whole-model training steps, and KV-cache decoding.

Each bench measures its variants interleaved in one process (so machine noise hits them alike),
reports medians with their spread, and writes JSON, a markdown table and plots (see report.py).
"""
