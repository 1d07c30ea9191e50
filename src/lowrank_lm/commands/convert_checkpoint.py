"""Convert a checkpoint of an earlier release to the current format. RISK: this reads pickles.

Earlier releases wrote the training state as a pickle (state.pt) and indexed FSDP shards with a pickled
dcp/.metadata. Unpickling a crafted file runs any code it carries, so every other command refuses such a
checkpoint. Run this only on a checkpoint you trust (one you or your team trained), and preferably in a
sandbox. It writes OUT in the current format (safetensors and JSON, read without pickle), which
`train train.resume=OUT`, eval, generate, export and lowrank_lm.load then take; SRC is left as it is.
"""

from __future__ import annotations

import argparse
import sys

EXAMPLES = ["lowrank-lm convert-checkpoint runs/old/checkpoints/step-00001000 runs/old-converted",
            "lowrank-lm train configs/cpu/tiny.yaml train.resume=runs/old-converted train.out_dir=runs/new"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """SRC (an older checkpoint or run folder) and OUT."""
    p.add_argument("checkpoint", metavar="SRC",
                   help="a checkpoint folder of an earlier release (or a run folder: its newest checkpoint); "
                        "its pickles are read, so it must come from a source you trust")
    p.add_argument("out", metavar="OUT", help="folder to write the converted checkpoint to (new or empty)")


def run(args: argparse.Namespace) -> None:
    """Convert SRC into OUT and print how to resume from it."""
    from lowrank_lm.checkpoint.convert import convert_checkpoint

    out = convert_checkpoint(args.checkpoint, args.out,
                             warn=lambda msg: print(f"warning: {msg}", file=sys.stderr, flush=True))
    print(f"converted {args.checkpoint} to {out} (safetensors and JSON, loaded without pickle); resume with "
          f"train.resume={out}")
