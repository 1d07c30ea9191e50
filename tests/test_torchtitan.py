"""torchtitan's model converter (lowrank_lm.integrations.torchtitan) on torchtitan 0.2.2's debug Llama 3, on CPU.

What runs on CPU and is tested here: the debug model (6 layers, width 256, 6,163,712 parameters) built on the
meta device as torchtitan's trainer builds it, converted through torchtitan's own converter container from a
parsed job config, materialized and initialised by its ``init_weights``, forward and backward with its default
sdpa attention (0.2.2's debug model needs no flex/varlen masks), the parameter and FLOP counts against counts
from the layers' shapes, and 2 gloo processes along torchtitan's trainer sequence (meta build, converters from
the job config, the ``lowrank_lm_llama3`` train spec's parallelize function, to_empty, init_weights) against one
process with the same weights: tensor parallelism (torchtitan's own ``apply_tp`` with the lowrank attention and
FFN factors sharded as its LoRA adapters shard, sequence-parallel, then its activation checkpointing), forward
and backward equal; FSDP (torchtitan's fully_shard, structures initialised on DTensor shards), forward equal
(its backward's reduce-scatter uses ReduceOp.PREMUL_SUM, which gloo lacks). torchtitan's meshes are built on the
CPU there by setting its module's device type to "cpu".

Not here: torchtitan's trainer itself (its device type falls back to "cuda"; scripts/gpu_bench.sh's
``torchtitan`` stage trains the debug model with the converter on a GPU) and multi-GPU runs.
"""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

pytest.importorskip("torchtitan", reason="torchtitan is not installed (pip install 'lowrank-lm[torchtitan]')")

from torchtitan.config import ConfigManager
from torchtitan.distributed import ParallelDims
from torchtitan.models.llama3 import Transformer, llama3_args
from torchtitan.protocols.model_converter import build_model_converters

from lowrank_lm.errors import UserError
from lowrank_lm.integrations import torchtitan as tt
from lowrank_lm.layers.lowrank import LowRankLinear

VOCAB, DIM, LAYERS, HEADS = 2048, 256, 6, 16
SEQ = 32


def _meta_model() -> Transformer:
    """torchtitan's debug Llama 3 on the meta device, with its own copy of the model args (the converter
    rebinds their FLOP count)."""
    args = dataclasses.replace(llama3_args["debugmodel"])  # fields only: a fresh get_nparams_and_flops
    with torch.device("meta"):
        return Transformer(args)


def _materialize(model: Transformer, seed: int = 0) -> Transformer:
    """What torchtitan's trainer does after converting and parallelizing: to_empty, then init_weights."""
    model.to_empty(device="cpu")
    torch.manual_seed(seed)
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device("cpu"))
    return model


def _converted(targets=("ffn",), seed: int = 0) -> tuple[Transformer, object]:
    model = _meta_model()
    report = tt.convert_model(model, tt.StructureSettings(kind="lowrank", fraction=0.5, targets=list(targets)))
    return _materialize(model, seed), report


def _job_config(*args: str):
    return ConfigManager().parse_args(["--job.custom_config_module", "lowrank_lm.integrations.torchtitan",
                                       "--model.converters", "lowrank_lm", *args])


def _dims(tp: int = 1) -> ParallelDims:
    return ParallelDims(dp_replicate=1, dp_shard=1, cp=1, tp=tp, pp=1, ep=1, etp=1, world_size=tp)


def test_converter_from_a_job_config_swaps_the_ffn_on_meta():
    job_config = _job_config("--lowrank_lm.kind", "lowrank", "--lowrank_lm.fraction", "0.5")
    converters = build_model_converters(job_config, _dims())  # torchtitan's container, as its trainer builds it
    model = _meta_model()
    converters.convert(model)
    (converter,) = converters.converters
    report = converter.report
    assert [r.name for r in report.replaced] == [f"layers.{i}.{w}" for i in range(LAYERS)
                                                 for w in ("feed_forward.w1", "feed_forward.w2", "feed_forward.w3")]
    assert {(r.in_features, r.out_features, r.settings["rank"]) for r in report.replaced} == {(256, 768, 96),
                                                                                             (768, 256, 96)}
    ffn = model.layers["0"].feed_forward
    assert all(isinstance(getattr(ffn, w), LowRankLinear) and getattr(ffn, w).u.is_meta for w in ("w1", "w2", "w3"))
    assert type(model.layers["0"].attention.wq) is torch.nn.Linear


def test_forward_backward_and_a_few_steps_after_torchtitans_init():
    model, _ = _converted(targets=("ffn", "attention"))
    x = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
    logits = model(x)
    assert logits.shape == (2, SEQ, VOCAB) and torch.isfinite(logits).all()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(4):
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.roll(-1, 1).flatten())
        opt.zero_grad()
        loss.backward()
        wq = model.layers["2"].attention.wq
        assert wq.u.grad.abs().sum() > 0 and wq.v.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


def test_structures_get_torchtitans_init_std(monkeypatch):
    seen: dict[int, float] = {}
    original = LowRankLinear.reset_parameters
    monkeypatch.setattr(LowRankLinear, "reset_parameters",
                        lambda self, std, init: (seen.__setitem__(id(self), std), original(self, std, init))[1])
    model, _ = _converted()
    for i, block in model.layers.items():
        depth_std = 0.02 / (2 * (int(i) + 1)) ** 0.5  # torchtitan's depth_init for w2 / w3; w1 gets 0.02
        ffn = block.feed_forward
        for layer, want in ((ffn.w1, 0.02), (ffn.w2, depth_std), (ffn.w3, depth_std)):
            assert seen[id(layer)] == pytest.approx(want, rel=0.01)  # the std of 196,608 draws of the stand-in


def _linear_weights_by_shape(model: torch.nn.Module) -> int:
    """Weights of every linear layer from its shape alone: in*out for nn.Linear, (in + out) * rank for lowrank."""
    total = 0
    for m in model.modules():
        if isinstance(m, LowRankLinear):
            total += (m.in_features + m.out_features) * m.rank
        elif isinstance(m, torch.nn.Linear):
            total += m.in_features * m.out_features
    return total


def test_counts_equal_counts_from_the_layer_shapes():
    model = _meta_model()
    args = model.model_args
    dense_titan = args.get_nparams_and_flops(model, SEQ)  # torchtitan's 6 x (params - embeddings) + attention
    attention = 6 * LAYERS * HEADS * 2 * (DIM // HEADS) * SEQ
    norms = LAYERS * 2 * DIM + DIM
    assert dense_titan == (6_163_712, 6 * (6_163_712 - VOCAB * DIM) + attention)
    assert tt.nparams_and_flops(model, args, SEQ) == (6_163_712, dense_titan[1] - 6 * norms)  # ours: linears only
    report = tt.convert_model(model, tt.StructureSettings(kind="lowrank", fraction=0.5))
    nparams, flops = args.get_nparams_and_flops(model, SEQ)  # what torchtitan's trainer calls after converting
    weights = _linear_weights_by_shape(model)
    assert nparams == report.params_after == VOCAB * DIM + norms + weights == 4_394_240
    assert report.flops_after == 2 * weights
    assert flops == 6 * weights + attention
    ffn = sum(r.params_after for r in report.replaced)
    assert ffn == LAYERS * 3 * (256 + 768) * 96
    assert report.params_before - report.params_after == LAYERS * 3 * 256 * 768 - ffn


def test_refusals_are_one_line():
    with pytest.raises(UserError, match="tensor parallelism"):
        tt.StructureConverter(_job_config("--lowrank_lm.fraction", "0.5"), _dims(tp=2))
    with pytest.raises(UserError, match="no \\[lowrank_lm\\] section"):
        tt.StructureConverter(ConfigManager().parse_args([]), _dims())
    model = _meta_model()
    tt.convert_model(model, tt.StructureSettings(kind="blockdense", fraction=0.5))
    with pytest.raises(UserError, match="lowrank layers only"):
        tt.tensor_parallel_plan(model)
    with pytest.raises(UserError, match="no module"):
        tt.convert_model(_meta_model(), tt.StructureSettings(kind="lowrank", fraction=0.5, targets=["mlp.up"]))


PARALLEL = {  # name: (job-config keys, ParallelDims sizes, backward): FSDP's gradient reduce-scatter uses
    # ReduceOp.PREMUL_SUM, which gloo lacks, so FSDP runs forward only here
    "tp": (["--parallelism.tensor_parallel_degree", "2"], {"tp": 2}, True),
    "fsdp": (["--parallelism.data_parallel_shard_degree", "2", "--training.mixed_precision_param", "float32"],
             {"dp_shard": 2}, False),
}


def _parallel_worker(rank: int, port: int, out_dir: str) -> None:
    """torchtitan's trainer sequence on 2 gloo processes, tensor-parallel then FSDP: meta build, converters from
    the job config, the train spec's parallelize_fn, to_empty, init_weights; then a single-process model with the
    same (gathered) weights."""
    import torchtitan.distributed.parallel_dims as pd
    from torch.distributed.tensor import DTensor
    from torchtitan.protocols.train_spec import get_train_spec

    pd.device_type = "cpu"  # torchtitan's device type falls back to "cuda" without one: its meshes on the CPU
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    full = lambda t: t.full_tensor() if isinstance(t, DTensor) else t  # noqa: E731
    try:
        torch.set_num_threads(1)
        results = {}
        for name, (keys, sizes, backward) in PARALLEL.items():
            job = _job_config("--model.name", tt.TRAIN_SPEC, "--lowrank_lm.fraction", "0.5", "--lowrank_lm.targets",
                              "ffn,attention", "--training.seq_len", str(SEQ), "--activation_checkpoint.mode", "full",
                              *keys)
            dims = ParallelDims(**{"dp_replicate": 1, "dp_shard": 1, "cp": 1, "tp": 1, "pp": 1, "ep": 1, "etp": 1,
                                   "world_size": 2, **sizes})
            model = _meta_model()
            build_model_converters(job, dims).convert(model)
            model = get_train_spec(tt.TRAIN_SPEC).parallelize_fn(model, dims, job)
            _materialize(model, seed=0)
            reference = _meta_model()
            tt.convert_model(reference, tt.StructureSettings(kind="lowrank", fraction=0.5,
                                                             targets=["ffn", "attention"]))
            _materialize(reference, seed=1)
            reference.load_state_dict({k.replace("._checkpoint_wrapped_module", ""): full(v)
                                       for k, v in model.state_dict().items()})
            x = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))
            logits, want = model(x), reference(x)  # tp: logits sharded over the vocabulary (loss parallel)
            ffn, ref_ffn = model.layers["3"].feed_forward, reference.layers["3"].feed_forward
            if backward:
                logits.float().square().mean().backward()
                want.float().square().mean().backward()
            block = model.layers["5"]
            results[name] = {
                "logits": (full(logits).detach(), want.detach()),
                "grads": [(full(getattr(ffn, w).u.grad), getattr(ref_ffn, w).u.grad) for w in ("w1", "w2")]
                if backward else [],
                "shards": [tuple(p.to_local().shape) for p in (block.feed_forward.w2.v, block.feed_forward.w2.u,
                                                                block.attention.wq.v, block.attention.wq.u)],
                "wrapped": type(model.layers["0"]).__name__, "embedding": type(model.tok_embeddings.weight).__name__}
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_tensor_parallel_and_fsdp_equal_one_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_parallel_worker, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    shards = {  # w2.v, w2.u, wq.v, wq.u on each rank
        # tp: w2 row-parallel (V split by input, U whole); wq column-parallel (V whole, U split by output)
        "tp": [(96, 384), (256, 96), (64, 256), (128, 64)],
        "fsdp": [(48, 768), (128, 96), (32, 256), (128, 64)],  # FSDP2: every parameter split on its first dim
    }
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        for name, res in got.items():
            assert res["embedding"] == "DTensor"  # torchtitan's plan / fully_shard ran on the dense parts
            assert res["wrapped"] in ("CheckpointWrapper", "FSDPCheckpointWrapper")  # and its activation checkpointing
            assert res["shards"] == shards[name], name
            torch.testing.assert_close(*res["logits"], rtol=1e-4, atol=1e-5)
            for tp_grad, grad in res["grads"]:
                torch.testing.assert_close(tp_grad, grad, rtol=1e-4, atol=1e-6)
