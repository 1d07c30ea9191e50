"""The paper's published points (Wei et al. 2024), as a results table ``fit`` can read: ``fit paper``.

Every point carries where it comes from (``source``) and how exact it is (``quality``):

* **exact**: a perplexity printed in a table of arXiv 2406.16450 v1 (Table 1: the Transformer-xl rows;
  Table 2: Transformer-m/l, GQA, wide-and-structured). The loss is ln(PPL); ``loss_err`` is half the last
  printed digit of the PPL, divided by the PPL (0.005 / PPL).
* **approximate**: read from figure pixels (the LowRank scaling figure, Transformer-s/m/l; the
  self-guided bubble figure). The reference gives the reading error as about +-0.02-0.05 for the scaling
  figure and +-0.1 PPL for the bubble figure; we take it in PPL (a loss error of 0.02-0.05 would be as
  large as the 63% series' whole gap to dense, and the figure's calibration reproduces the printed xl
  and dense-l PPLs to 0.01), so ``loss_err`` = 0.05 / PPL and 0.1 / PPL.

Training FLOPs are the paper's convention (3 x forward, full S^2 attention), computed with the authors'
formula for all 12 scaling points (they reproduce every printed FLOP count to 3 digits); points whose
FLOPs exist only as printed values (GQA) use those. Self-guided (fixedflop) and "more tokens" runs have
the dense model's FLOPs by construction (within 0.4%). Parameter counts are in the reference's sections
1, 4.1, 4.2 and 5.3. Nothing here is fitted or smoothed: these are the published numbers.
"""

from __future__ import annotations

import math
from typing import Any

# Sizes of the scaling study: (total params M, FFN params M, training tokens, training FLOPs) per variant.
# Reference section 4.2 [CALC from the authors' code; matches every printed value].
_TOKENS = {"s": 2.2e9, "m": 6.7e9, "l": 14.58e9, "xl": 25.5e9}
_SCALING = {
    # size: {series: (params M, FFN params M, FLOPs)}
    "s": {"dense": (109.6, 56.6, 1.695e18), "lowrank-63": (90.2, 37.2, 1.438e18),
          "lowrank-32": (73.9, 20.9, 1.224e18)},
    "m": {"dense": (335.1, 201.3, 1.548e19), "lowrank-63": (262.7, 129.0, 1.257e19),
          "lowrank-32": (202.4, 68.7, 1.015e19)},
    "l": {"dense": (729.1, 453.0, 7.034e19), "lowrank-63": (566.3, 290.2, 5.610e19),
          "lowrank-32": (430.7, 154.5, 4.424e19)},
    "xl": {"dense": (1274.1, 805.3, 2.102e20), "lowrank-63": (984.7, 515.9, 1.660e20),
           "lowrank-32": (743.6, 274.7, 1.291e20)},
}
# Validation loss read from the LowRank scaling figure (reference section 4.3, FIG~) for s, m, l; the xl
# column and dense m/l are printed PPLs (Table 1, Table 2) and enter as ("ppl", value).
_SCALING_LOSS: dict[str, dict[str, tuple[str, float]]] = {
    "s": {"dense": ("loss", 3.257), "lowrank-63": ("loss", 3.302), "lowrank-32": ("loss", 3.375)},
    "m": {"dense": ("ppl", 18.29), "lowrank-63": ("loss", 2.953), "lowrank-32": ("loss", 3.025)},
    "l": {"dense": ("ppl", 14.29), "lowrank-63": ("loss", 2.695), "lowrank-32": ("loss", 2.753)},
    "xl": {"dense": ("ppl", 12.46), "lowrank-63": ("ppl", 12.86), "lowrank-32": ("ppl", 13.55)},
}
_STRUCTURE = {"dense": ("dense", None), "lowrank-63": ("lowrank", 0.63), "lowrank-32": ("lowrank", 0.32)}

# Table 1 (xl, 25.5B tokens): the other structures, one point each. (series, params M, FFN M, FLOPs, PPL, hours)
_TABLE1 = [
    ("blockdense-63", "blockdense", 0.63, 954.6, 485.8, 1.614e20, 12.97, 298.7),
    ("blockshuffle-63", "blockshuffle", 0.63, 984.7, 515.9, 1.660e20, 12.98, 330.6),
    ("blockdense-32", "blockdense", 0.32, 728.5, 259.7, 1.268e20, 13.74, 261.2),
    ("blockshuffle-32", "blockshuffle", 0.32, 743.6, 274.7, 1.291e20, 13.81, 284.9),
]
_TABLE1_HOURS = {"dense": 352.2, "lowrank-63": 302.2, "lowrank-32": 260.2}

# Table 2 (wide and structured, section 5.3). (series, size, params M, tokens, FLOPs, flops source, PPL)
_TABLE2 = [
    ("dense-gqa", "m", 335.0, 6.7e9, 1.55e19, "printed", 18.23),
    ("dense-gqa", "l", 729.0, 14.6e9, 7.03e19, "printed", 14.40),
    ("wide-lowrank", "m", 219.4, 10.58e9, 1.551e19, "calc", 17.89),
    ("wide-lowrank", "l", 464.4, 23.36e9, 7.032e19, "calc", 14.27),
    ("wide-lowrank-selfguided", "m", 219.4, 6.7e9, 1.559e19, "calc", 18.04),
    ("wide-lowrank-selfguided", "l", 464.4, 14.58e9, 7.029e19, "calc", 14.40),
]

# Self-guided bubble figure (section 5.1, FIG~, +-0.1 PPL): LowRank 32% at the dense model's FLOPs,
# either trained on more tokens or with fixedflop self-guided training on the dense token count.
_BUBBLE = {
    "lowrank-32-moretokens": {"s": (26.9, 3.05e9), "m": (18.85, 10.22e9), "l": (14.73, 23.19e9),
                              "xl": (12.76, 41.54e9)},
    "lowrank-32-selfguided": {"s": (26.75, 2.2e9), "m": (18.7, 6.7e9), "l": (14.68, 14.58e9),
                              "xl": (12.87, 25.5e9)},
}

FIGURE_SERIES = ("dense", "lowrank-63", "lowrank-32")
"""The three curves of the paper's scaling figure (its Figure 1 in the later versions)."""


def _row(series: str, size: str, structure: str, fraction: float | None, params_m: float | None,
         ffn_m: float | None, tokens: float, flops: float, loss: float, loss_err: float, quality: str,
         source: str, wall_h: float | None = None) -> dict[str, Any]:
    return {"name": f"paper-{size}-{series}", "series": series, "size": size, "structure": structure,
            "fraction": fraction, "params": None if params_m is None else round(params_m * 1e6),
            "params_ffn": None if ffn_m is None else round(ffn_m * 1e6), "tokens": round(tokens),
            "flops": flops, "loss": loss, "ppl": math.exp(loss), "loss_err": loss_err, "quality": quality,
            "source": source, "wall_s": None if wall_h is None else wall_h * 3600, "status": "done"}


def paper_rows() -> list[dict[str, Any]]:
    """All published points, scaling-figure series first (dense, LowRank 63%, LowRank 32%)."""
    rows = []
    for series in FIGURE_SERIES:
        structure, fraction = _STRUCTURE[series]
        for size in ("s", "m", "l", "xl"):
            params, ffn, flops = _SCALING[size][series]
            kind, value = _SCALING_LOSS[size][series]
            if kind == "ppl":
                loss, err, quality = math.log(value), 0.005 / value, "exact"
                source = "2406.16450v1 Table 1" if size == "xl" else "2406.16450v1 Table 2"
            else:
                loss, err, quality = value, 0.05 / math.exp(value), "approximate"
                source = "LowRank scaling figure (pixel read-out)"
            rows.append(_row(series, size, structure, fraction, params, ffn, _TOKENS[size], flops, loss, err,
                             quality, source, _TABLE1_HOURS[series] if size == "xl" else None))
    for series, structure, fraction, params, ffn, flops, ppl, hours in _TABLE1:
        rows.append(_row(series, "xl", structure, fraction, params, ffn, _TOKENS["xl"], flops, math.log(ppl),
                         0.005 / ppl, "exact", "2406.16450v1 Table 1", hours))
    for series, size, params, tokens, flops, flops_source, ppl in _TABLE2:
        structure = "dense" if series == "dense-gqa" else "lowrank"
        rows.append(_row(series, size, structure, None if structure == "dense" else 0.63, params, None, tokens,
                         flops, math.log(ppl), 0.005 / ppl, "exact",
                         f"2406.16450v1 Table 2 (FLOPs {flops_source})"))
    for series, points in _BUBBLE.items():
        for size, (ppl, tokens) in points.items():
            flops = _SCALING[size]["dense"][2]  # matched to the dense model's FLOPs by construction
            params, ffn, _ = _SCALING[size]["lowrank-32"]
            rows.append(_row(series, size, "lowrank", 0.32, params, ffn, tokens, flops, math.log(ppl), 0.1 / ppl,
                             "approximate", "self-guided figure (pixel read-out); FLOPs = dense"))
    return rows


PAPER_COLUMNS = ("name", "series", "size", "structure", "fraction", "params", "params_ffn", "tokens", "flops",
                 "loss", "ppl", "loss_err", "quality", "source", "wall_s", "status")


def paper_points(x_column: str = "flops") -> list[dict[str, Any]]:
    """The rows in the form :func:`lowrank_lm.stats.table.read_points` returns (``x`` set, no unknown x)."""
    out = []
    for row in paper_rows():
        if row.get(x_column) is None:
            continue
        out.append({**row, "x": float(row[x_column])})
    return out
