"""Run-to-run noise: runs that differ only in their training seed, grouped into cells, and their spread.

A *cell* is one configuration of a series (one model size at one token budget); a sweep with ``seeds:``
trains every cell once per seed. The fits use the mean log-loss of each cell, and the seed-to-seed spread
enters their bootstrap as a noise floor: a replicate never perturbs a cell mean by less than the measured
run-to-run noise of a mean of that many seeds.

The spread is *pooled* over all cells of all series (one relative noise level, as the log-space fits
assume): with two seeds a cell's own standard deviation has one degree of freedom and is nearly useless
alone, while twelve cells with two seeds each give twelve. The pooled estimate is the root of the summed
within-cell squares over the summed degrees of freedom, and the bootstrap draws it from its own sampling
distribution (s^2 * dof / chi2(dof)), as it does the residual scale (:mod:`bootstrap`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

CONFIG_KEYS = ("size", "params", "tokens", "budget", "lr")
"""Columns that, with the series and x, identify one configuration (the runs of one cell differ in seed only)."""


@dataclass
class Cells:
    """Rows grouped by cell: ``index`` maps each row to its cell; means and counts per cell."""

    keys: list[Hashable]
    index: np.ndarray
    mean_log: np.ndarray
    """Mean of ln(loss) over the cell's runs."""
    count: np.ndarray
    sum_sq: np.ndarray
    """Sum of squared deviations of ln(loss) from the cell mean (0 for a single run)."""


@dataclass
class SeedNoise:
    """The pooled run-to-run noise of ln(loss): about the relative noise of one run's loss."""

    sd: float
    dof: int
    """Summed degrees of freedom (runs minus cells, over cells with at least two runs)."""
    cells: int
    """Cells measured with at least two seeds."""
    loss_scale: float
    """A typical loss (the geometric mean of the cells'), to state the noise in loss units."""

    @property
    def sd_loss(self) -> float:
        """The noise in loss units at the typical loss."""
        return self.sd * self.loss_scale

    def to_json(self) -> dict[str, Any]:
        return {"sd_log": self.sd, "sd_loss": self.sd_loss, "dof": self.dof, "cells": self.cells}

    def describe(self) -> str:
        """One line for people: the noise of one run, and how well it is known."""
        return (f"run-to-run noise (seed to seed, pooled over {self.cells} cells, {self.dof} degrees of freedom): "
                f"{self.sd_loss:.3g} in loss ({self.sd:.2%} of the loss) for one run")


def group_cells(keys: Sequence[Hashable], loss: np.ndarray) -> Cells:
    """Group rows with equal keys; keys keep their first-seen order."""
    order: dict[Hashable, int] = {}
    index = np.array([order.setdefault(k, len(order)) for k in keys], dtype=int)
    y = np.log(np.asarray(loss, float))
    count = np.bincount(index, minlength=len(order)).astype(float)
    mean = np.bincount(index, weights=y, minlength=len(order)) / count
    sum_sq = np.bincount(index, weights=(y - mean[index]) ** 2, minlength=len(order))
    return Cells(list(order), index, mean, count, sum_sq)


def pooled_noise(groups: Sequence[Cells]) -> SeedNoise | None:
    """The pooled within-cell spread of ``groups`` (None when no cell has two runs)."""
    ss = sum(float(c.sum_sq[c.count > 1].sum()) for c in groups)
    dof = int(sum(float((c.count[c.count > 1] - 1).sum()) for c in groups))
    cells = int(sum(int((c.count > 1).sum()) for c in groups))
    if dof == 0:
        return None
    means = np.concatenate([c.mean_log for c in groups])
    return SeedNoise(sd=math.sqrt(ss / dof), dof=dof, cells=cells, loss_scale=float(np.exp(means.mean())))


def has_seeds(rows: Sequence[dict[str, Any]]) -> bool:
    """True when the rows carry a seed column with at least one value."""
    return any(str(r.get("seed") or "").strip() for r in rows)


def average_seeds(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], SeedNoise | None]:
    """Rows of ``fit``'s compute law with the seeds of one point merged: (one row per point, pooled noise).

    A point is one configuration of a series (the same x, size, parameters, tokens, budget and learning rate;
    a table without an lr column reads as one rate). Its loss becomes the geometric mean over seeds and its
    ``loss_err`` the error of that mean, sqrt(stated error^2 + (noise * loss)^2 / seeds), which the bootstrap
    uses as a floor; the noise is the pooled seed-to-seed spread over every point of every series.
    """
    by_series: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_series.setdefault(r["series"], []).append(r)
    cells = {name: group_cells([(r["x"], *(str(r.get(k) or "") for k in CONFIG_KEYS)) for r in rs],
                               np.array([r["loss"] for r in rs])) for name, rs in by_series.items()}
    noise = pooled_noise(list(cells.values()))
    out = []
    for name, rs in by_series.items():
        c = cells[name]
        for k in range(len(c.keys)):
            members = [r for r, i in zip(rs, c.index) if i == k]
            merged = dict(members[0])
            merged["loss"] = float(np.exp(c.mean_log[k]))
            stated = float(np.mean([m["loss_err"] for m in members]))
            seed_part = noise.sd * merged["loss"] / math.sqrt(c.count[k]) if noise else 0.0
            merged["loss_err"] = math.hypot(stated, seed_part)
            merged["seeds"] = int(c.count[k])
            merged["seed"] = ",".join(str(m.get("seed") or "") for m in members)
            out.append(merged)
    return out, noise
