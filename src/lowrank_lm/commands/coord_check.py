"""Coordinate check: RMS of every layer's output against width after a few steps (is muP right?).

Trains the config at each width for a few steps from the same seed (constant train.lr, fp32, no clipping) and
prints, per layer, the slope of log RMS against log width after the last step: about 0 under muP, above 0 for
the logits under the standard parametrisation. --out writes coord_check.json (one record per layer, step and
width) and coord_check.png (one panel per step); --json prints the records.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lowrank_lm.commands.common import add_config_arguments
from lowrank_lm.errors import UserError

EXAMPLES = ["lowrank-lm coord-check configs/cpu/tiny.yaml model.parametrization=mup model.mup_base_width=64 "
            "--widths 64,128,256,512 --steps 3 --out runs/coord-mup",
            "lowrank-lm coord-check configs/cpu/tiny.yaml model.ffn.kind=btt model.ffn.rank=2 "
            "model.parametrization=mup model.mup_base_width=64 --json"]


def _widths(text: str) -> list[int]:
    try:
        widths = sorted({int(w) for w in text.split(",") if w.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--widths takes comma-separated integers, got {text!r}") from None
    if len(widths) < 2 or widths[0] <= 0:
        raise argparse.ArgumentTypeError(f"--widths needs two or more positive widths, got {text!r}")
    return widths


def _steps(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--steps takes a positive integer, got {text!r}")
    return int(text)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """CONFIG with overrides, and the widths, steps and outputs of the check."""
    add_config_arguments(p)
    p.add_argument("--widths", type=_widths, default=_widths("64,128,256,512"), metavar="W,W,...",
                   help="hidden_dim values (attn_dim and ffn_dim follow)")
    p.add_argument("--steps", type=_steps, default=3, help="training steps per width")
    p.add_argument("--out", type=Path, help="folder for coord_check.json and coord_check.png")
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.add_argument("--device", default="cpu", help="where to train: cpu, cuda, cuda:1, ...")


OUTPUTS = ("coord_check.json", "coord_check.png")


def run(args: argparse.Namespace) -> None:
    """Train each width a few steps, print each layer's slope of RMS against width, and write --out."""
    import torch

    from lowrank_lm.atomic import write_text_atomic
    from lowrank_lm.coord_check import check_width, plot, slopes, width_config
    from lowrank_lm.data import prepare
    from lowrank_lm.ownership import Ownership

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {args.device}: no CUDA device here; use --device cpu")
    cfgs = [width_config(args.config, args.overrides, w, args.device) for w in args.widths]  # all checked first
    if args.out is not None:  # ours or refused, before any training (lowrank_lm.ownership)
        Ownership(args.out, ".lowrank-lm-coord-check.json", "lowrank-lm coord-check").claim(
            OUTPUTS, "give --out a new or empty folder, or one an earlier coord-check wrote")
    data_dir = prepare(cfgs[0].data)
    records = [r for cfg in cfgs for r in check_width(cfg, data_dir, args.steps)]
    if args.out is not None:
        write_text_atomic(args.out / "coord_check.json", json.dumps([r.to_dict() for r in records], indent=1) + "\n")
        plot(records, args.out / "coord_check.png")
    if args.json:
        print(json.dumps([r.to_dict() for r in records]))
        return
    fitted = slopes(records, args.steps)
    print(f"slope of log RMS vs log width after step {args.steps} (widths {', '.join(map(str, args.widths))}; "
          f"{cfgs[0].model.parametrization}):")
    for layer, slope in fitted.items():
        print(f"  {layer:<32} {slope:+.3f}")
    if args.out is not None:
        print(f"wrote {args.out / 'coord_check.json'} and {args.out / 'coord_check.png'}")
