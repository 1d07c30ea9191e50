"""The benches' correctness (never their timings): well-formed rows whose ratios are their own numbers."""

import json
import math
import platform
import subprocess
import sys

import pytest
import torch

from lowrank_lm.bench import premerge
from lowrank_lm.bench.decode import DecodeBenchSpec, run_decode_bench, summary
from lowrank_lm.bench.timer import Timing, measure
from lowrank_lm.bench.train import TrainBenchSpec, peer_model, run_train_bench
from lowrank_lm.bench.variants import structure_for
from lowrank_lm.cli import main
from lowrank_lm.layers import LowRankLinear, registry
from lowrank_lm.model import Transformer
from lowrank_lm.premerge import premerged_layers

from .conftest import small_config

FFN_KEYS = {"width", "kind", "fraction", "rank", "num_blocks", "tokens", "mode", "dtype", "premerge", "median_ms",
            "speedup", "flop_speedup", "efficiency", "device", "torch", "threads"}


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(premerge.CACHE_ENV, str(tmp_path / "cache"))


def test_paper_ranks_and_blocks_from_fractions():
    assert structure_for("lowrank", 1024, 4096, 0.63).rank == 512
    assert structure_for("lowrank", 1024, 4096, 0.32).rank == 256
    assert structure_for("lowrank", 2048, 8192, 0.32).rank == 512
    assert structure_for("blockshuffle", 2048, 8192, 0.63).num_blocks == 2
    assert structure_for("blockshuffle", 2048, 8192, 0.32).num_blocks == 4
    bd = structure_for("blockdense", 1024, 4096, 0.32)
    assert bd.num_blocks == 4 and bd.rank % 4 == 0
    assert 5 * bd.rank * (1 + 1 / 4) / (8 * 1024) == pytest.approx(0.32, abs=0.03)  # the paper's ratio formula


def test_measure_interleaves_rotates_and_sizes_its_rounds(monkeypatch):
    """The schedule of measure() on a fake clock: each call advances it by the variant's own cost."""
    from lowrank_lm.bench import timer

    clock = [0.0]
    cost_s = {"a": 1e-3, "b": 2e-3, "c": 5e-4}
    direct_calls = {name: 0 for name in cost_s}

    def variant(name):
        def fn():
            clock[0] += cost_s[name]
            direct_calls[name] += 1
        return fn

    fns = {name: variant(name) for name in cost_s}
    name_of = {fn: name for name, fn in fns.items()}
    blocks: list[tuple[str, int]] = []

    def fake_block(fn, number, device):
        blocks.append((name_of[fn], number))
        start = clock[0]
        for _ in range(number):
            fn()
        return (clock[0] - start) / number

    monkeypatch.setattr(timer, "_time_block", fake_block)
    monkeypatch.setattr(timer, "time", type("FakeTime", (), {"perf_counter": staticmethod(lambda: clock[0])}))
    t = measure(fns, torch.device("cpu"), rounds=4, min_round_s=0.01, warmup=3)
    # a round is >= min_round_s: 10 calls of 1 ms, 5 of 2 ms, 20 of 0.5 ms
    calls = {"a": 10, "b": 5, "c": 20}
    # round-robin, the starting variant rotating each round
    assert [name for name, _ in blocks] == list("abc" + "bca" + "cab" + "abc")
    assert all(number == calls[name] for name, number in blocks)
    for name, timing in t.items():
        assert timing.calls_per_round == calls[name]
        assert timing.samples_ms == pytest.approx([cost_s[name] * 1e3] * 4)
        assert direct_calls[name] == 3 + 4 * calls[name]  # warm-up calls, then 4 rounds


def test_timing_statistics_by_hand():
    t = Timing([4.0, 1.0, 3.0, 2.0, 10.0], calls_per_round=7)
    assert (t.median_ms, t.min_ms, t.max_ms) == (3.0, 1.0, 10.0)
    assert t.iqr_ms == pytest.approx(4.0 - 2.0)  # inclusive quartiles of 1 2 3 4 10
    assert Timing([5.0], 1).iqr_ms == 0.0


def test_ffn_bench_json_rows_are_consistent(capsys):
    code, out, _ = run_cli(capsys, "bench", "ffn", "--widths", "32,64", "--tokens", "4,32", "--rounds", "2",
                           "--min-round-s", "0.001", "--premerge", "--premerge-max-tokens", "8", "--threads", "1",
                           "--json")
    assert code == 0
    rows = json.loads(out)
    # widths x tokens x (dense + each structured kind x 2 fractions, x with/without pre-merge where it is linear)
    assert len(rows) == 2 * 2 * (1 + sum(2 * (2 if k in registry.linear_kinds() else 1)
                                         for k in registry.structured_kinds()))
    assert {r["kind"] for r in rows if r["premerge"]} == set(registry.linear_kinds())
    for r in rows:
        assert set(r) >= FFN_KEYS
        dense = next(d for d in rows if d["kind"] == "dense" and (d["width"], d["tokens"]) == (r["width"], r["tokens"]))
        assert r["speedup"] == pytest.approx(dense["median_ms"] / r["median_ms"])
        assert r["efficiency"] == pytest.approx(r["speedup"] / r["flop_speedup"])
        # the FLOP bound is the ratio of the layers' own FLOP counts: (T tokens x flops/token) each
        assert r["flop_speedup"] == pytest.approx(dense["flops"] / r["flops"])
        if r["premerge"]:
            assert r["path"] == ("merged" if r["tokens"] <= 8 else "factored")
    lowrank_32 = [r for r in rows if r["kind"] == "lowrank" and r["fraction"] == 0.32 and r["width"] == 64]
    assert {r["rank"] for r in lowrank_32} == {16}
    assert lowrank_32[0]["flop_speedup"] == pytest.approx(3.2)


def test_ffn_bench_writes_json_markdown_and_plots(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "bench", "ffn", "--widths", "32,64", "--tokens", "4,16", "--kinds", "dense,lowrank",
                           "--fractions", "0.32", "--mode", "fwdbwd", "--dtype", "bf16", "--rounds", "1",
                           "--min-round-s", "0.001", "--threads", "1", "--out", str(tmp_path / "r"))
    assert code == 0 and out.startswith("| width |")
    data = json.loads((tmp_path / "r" / "ffn.json").read_text())
    assert data["meta"]["dtype"] == "bf16" and data["meta"]["threads"] == 1 and data["rows"][0]["mode"] == "fwdbwd"
    assert "| lowrank |" in (tmp_path / "r" / "ffn.md").read_text()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "r" / "ffn-latency-vs-width.png").stat().st_size > 1000


def test_ffn_bench_under_compile_keeps_its_rows_consistent(capsys):
    from torch._dynamo.utils import counters

    counters.clear()
    code, out, _ = run_cli(capsys, "bench", "ffn", "--widths", "32", "--tokens", "16", "--kinds", "dense,lowrank",
                           "--fractions", "0.32", "--compile", "--rounds", "1", "--min-round-s", "0.001",
                           "--threads", "1", "--device", "cpu", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["kind"] for r in rows] == ["dense", "lowrank"] and all(r["compile"] for r in rows)
    assert rows[1]["speedup"] == pytest.approx(rows[0]["median_ms"] / rows[1]["median_ms"])
    assert counters["stats"]["unique_graphs"] >= 2  # both FFNs really ran compiled, not eager


def test_premerge_summary_reports_the_worst_ratio_at_each_end():
    from lowrank_lm.bench.ffn import ffn_table, premerge_summary

    def row(kind, tokens, ms, premerge=False, path=None):
        return {"width": 64, "tokens": tokens, "mode": "fwd", "dtype": "fp32", "kind": kind, "fraction": 0.32,
                "premerge": premerge, "path": path, "median_ms": ms}

    rows = [row("dense", 4, 1.0), row("lowrank", 4, 2.0), row("lowrank", 4, 1.05, True, "merged"),
            row("blockdense", 4, 2.2), row("blockdense", 4, 1.2, True, "merged"),
            row("dense", 2048, 9.0), row("lowrank", 2048, 3.0), row("lowrank", 2048, 3.3, True, "factored")]
    s = premerge_summary(rows)
    assert s["small_vs_dense"]["ratio"] == pytest.approx(1.2) and s["small_vs_dense"]["kind"] == "blockdense"
    assert s["large_vs_factored"]["ratio"] == pytest.approx(1.1) and s["large_vs_factored"]["tokens"] == 2048
    assert "worst 1.200x (blockdense 32%, width 64, 4 tokens, merged path)" in ffn_table(rows)
    assert premerge_summary([r for r in rows if not r["premerge"]]) is None


def test_interrupted_ffn_bench_writes_the_widths_it_finished(capsys, tmp_path, monkeypatch):
    from lowrank_lm.bench import ffn

    real, calls = ffn.measure, []

    def measure_then_interrupt(*args, **kwargs):  # a time limit's SIGINT during the second width
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ffn, "measure", measure_then_interrupt)
    code, _, err = run_cli(capsys, "bench", "ffn", "--widths", "32,64", "--tokens", "8", "--kinds", "dense,lowrank",
                           "--fractions", "0.32", "--rounds", "1", "--min-round-s", "0.001", "--threads", "1",
                           "--out", str(tmp_path / "r"))
    assert code == 130 and "writing the 2 rows measured so far" in err
    data = json.loads((tmp_path / "r" / "ffn.json").read_text())
    assert data["meta"]["interrupted"] is True
    assert [(r["width"], r["kind"]) for r in data["rows"]] == [(32, "dense"), (32, "lowrank")]


def test_interrupted_decode_bench_keeps_the_finished_batches(monkeypatch):
    from lowrank_lm.bench import decode
    from lowrank_lm.bench.report import Interrupted

    real = decode._measure_batch

    def measure_or_interrupt(variants, batch, *args):
        if batch == 2:
            raise KeyboardInterrupt
        return real(variants, batch, *args)

    monkeypatch.setattr(decode, "_measure_batch", measure_or_interrupt)
    spec = DecodeBenchSpec(configs=[("dense", small_config().model)], batches=[1, 2], gen=3, dtype="fp32", rounds=1)
    with pytest.raises(Interrupted) as e:
        run_decode_bench(spec, torch.device("cpu"))
    assert [r["batch"] for r in e.value.rows] == [1]


@pytest.mark.parametrize("argv,message", [
    (["bench", "ffn", "--mode", "fwdbwd", "--premerge"], "--premerge is an inference path"),
    (["bench", "ffn", "--kinds", "dense,sparse"], "unknown FFN kind 'sparse'"),
    (["bench", "ffn", "--widths", "64", "--kinds", "blockshuffle", "--blocks", "3"], "does not divide"),
    (["bench", "ffn", "--widths", "0"], "positive whole numbers"),
    (["bench", "train", "configs/cpu/tiny.yaml", "--compile", "maybe"], "--compile maybe"),
    (["bench", "decode", "configs/cpu/tiny.yaml", "--gen", "600"], "exceeds model.seq_len"),
])
def test_bench_user_errors_are_one_line(capsys, argv, message):
    code, _, err = run_cli(capsys, *argv, "--threads", "1", "--rounds", "1")
    assert code == 2 and message in err
    assert err.strip().count("\n") == 0 and "Traceback" not in err


def test_premerge_calibration_is_cached_per_device_and_shape(monkeypatch):
    layer = LowRankLinear(32, 64, rank=8, bias=True).eval()
    layer.reset_parameters(0.02, "spectral")
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    n = premerge.calibrate(layer)
    assert n == 0 or math.log2(n).is_integer()
    key = premerge.layer_key(layer, torch.device("cpu"), torch.float32)
    assert json.loads(premerge.cache_path().read_text())[key] == n
    monkeypatch.setattr(premerge, "measure_crossover", lambda *a, **k: pytest.fail("should come from the cache"))
    assert premerge.calibrate(layer) == n
    # calibration leaves the layer as it was: in eval mode, the same tensors, nothing attached
    assert not layer.training and not layer._forward_hooks and list(layer.named_buffers()) == []
    after = layer.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in after.items())


def test_crossover_search_looks_past_a_few_token_win_of_the_factors(monkeypatch):
    from lowrank_lm.bench.timer import Timing

    merged_wins = {4, 8, 16, 32}  # the factors win at 1-2 tokens (fewer bytes) and again from 64 on
    tried = []

    def fake_measure(fns, device, **kwargs):
        tokens = fns["merged"].__defaults__[0].shape[0]
        tried.append(tokens)
        fast, slow = Timing([1.0], 1), Timing([2.0], 1)
        return {"merged": fast, "factored": slow} if tokens in merged_wins else {"merged": slow, "factored": fast}

    monkeypatch.setattr(premerge, "measure", fake_measure)
    layer = LowRankLinear(32, 64, rank=8, bias=True)
    assert premerge.measure_crossover(layer) == 32
    assert tried == [1, 2, 4, 8, 16, 32, 64, 128]  # stops after two factored wins past 16 tokens


def test_apply_premerge_uses_the_config_limit_and_keeps_logits():
    cfg = small_config("model.ffn.kind=lowrank", "model.ffn.rank=16", "model.ffn.premerge_max_tokens=4").model
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 3))
    with torch.no_grad():
        before = model(ids)
        chosen = premerge.apply_premerge(model)
        after = model(ids)
    assert chosen and set(chosen.values()) == {4}
    assert [m.structured for m in premerged_layers(model)] == list(model.structured_layers())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_train_bench_rows_against_the_peer():
    pytest.importorskip("transformers")
    spec = TrainBenchSpec(model=small_config().model, kinds=["dense", "lowrank"], fractions=[0.32], batch=2, seq=16,
                          dtype="fp32", compile=(False,), rounds=2)
    rows, notes = run_train_bench(spec, torch.device("cpu"))
    assert notes == []  # the peer exists and has exactly our parameter count
    by = {r["variant"]: r for r in rows}
    dense, peer = by["dense"], by["peer: transformers GPTNeoXForCausalLM"]
    assert peer["params"] == dense["params"] and peer["vs_peer"] == 1.0
    for r in rows:
        assert r["tokens_per_s"] == pytest.approx(2 * 16 / (r["median_ms"] / 1e3))
        assert r["speedup"] == pytest.approx(r["tokens_per_s"] / dense["tokens_per_s"])
        assert r["tflops"] == pytest.approx(r["flops_per_token"] * r["tokens_per_s"] / 1e12)
        assert r["mfu"] is None  # no peak FLOP/s for CPUs
    assert by["lowrank 32% (R=16)"]["flop_speedup"] > 1


def test_peer_is_skipped_with_a_reason_when_no_model_matches():
    model, why = peer_model(small_config("model.num_kv_heads=2").model)
    assert model is None and "peer skipped" in why


def test_decode_bench_throughput_is_batch_times_tokens_over_time():
    dense = small_config().model
    lowrank = small_config("model.ffn.kind=lowrank", "model.ffn.rank=16", "model.ffn.premerge_max_tokens=4").model
    spec = DecodeBenchSpec(configs=[("dense", dense), ("lowrank", lowrank)], batches=[1, 2], gen=5, dtype="fp32",
                           premerge="both", rounds=2)
    rows = run_decode_bench(spec, torch.device("cpu"))
    assert len(rows) == 2 * 3  # batches x (dense, lowrank, lowrank pre-merged)
    for r in rows:
        assert r["status"] == "ok"
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * 5 / (r["median_ms"] / 1e3))
    best = summary(rows)
    assert [s["config"] for s in best] == ["dense", "lowrank", "lowrank"]
    assert best[0]["vs_first"] == 1.0
    for s in best:
        mine = [r["tokens_per_s"] for r in rows if (r["config"], r["premerge"]) == (s["config"], s["premerge"])]
        assert s["max_tokens_per_s"] == max(mine)


def test_busy_cores_counts_non_idle_time_across_all_cores(monkeypatch):
    import os

    from lowrank_lm.bench.report import busy_cores

    lines = iter(["cpu  100 0 100 800 0 0 0 0 0 0", "cpu  150 0 150 850 0 0 0 0 0 0"])  # 100 busy of 150
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert busy_cores(0.0, read=lambda: next(lines)) == pytest.approx(4 * 100 / 150)
    assert busy_cores(0.0, read=lambda: "") is None  # no /proc/stat: unknown


TUNE_MALLOC_PROBE = """
import ctypes, ctypes.util
from lowrank_lm.runtime import tune_malloc
libc = ctypes.CDLL(ctypes.util.find_library("c"))
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks "
                                             "fordblks keepcost".split()]
libc.mallinfo2.restype, libc.malloc.restype = Info, ctypes.c_void_p
libc.malloc.argtypes, libc.free.argtypes = [ctypes.c_size_t], [ctypes.c_void_p]
def mmapped_blocks_with_64mib_held():
    p = libc.malloc(64 << 20)
    n = libc.mallinfo2().hblks
    libc.free(p)
    return n
base = libc.mallinfo2().hblks
before = mmapped_blocks_with_64mib_held()
applied = tune_malloc()
print(before - base, mmapped_blocks_with_64mib_held() - base, applied, tune_malloc())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt and mallinfo2 are glibc's")
def test_tune_malloc_moves_large_allocations_from_mmap_to_the_heap():
    # a fresh process: this one may have tuned already
    proc = subprocess.run([sys.executable, "-c", TUNE_MALLOC_PROBE], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["1", "0", "True", "True"]  # 64 MiB: an mmap before, heap after; applied once


def test_gpu_bench_script_parses():
    import subprocess

    proc = subprocess.run(["bash", "-n", "scripts/gpu_bench.sh"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_train_bench_times_each_loss_chunk_size_of_ours():
    spec = TrainBenchSpec(model=small_config().model, kinds=["dense"], fractions=[], batch=2, seq=16,
                          dtype="fp32", compile=(False,), peer=False, rounds=1, loss_chunks=(0, 8))
    rows, _ = run_train_bench(spec, torch.device("cpu"))
    assert [(r["variant"], r["loss_chunk_tokens"]) for r in rows] == [("dense", 0), ("dense loss-chunk 8", 8)]
    assert rows[1]["speedup"] == pytest.approx(rows[1]["tokens_per_s"] / rows[0]["tokens_per_s"])


def test_decode_bench_compares_eager_and_static_decoding(capsys):
    code, out, err = run_cli(capsys, "bench", "decode", "configs/cpu/tiny.yaml", "model.num_layers=1",
                             "--batches", "2", "--gen", "4", "--dtype", "fp32", "--decode", "eager,static",
                             "--device", "cpu", "--threads", "1", "--rounds", "1", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["decode"], r["batch"], r["status"]) for r in rows] == [("eager", 2, "ok"), ("static", 2, "ok")]
    assert all(r["first_call_s"] > 0 for r in rows)
    code, _, err = run_cli(capsys, "bench", "decode", "configs/cpu/tiny.yaml", "--decode", "graph")
    assert code == 2 and "--decode graph: use eager, static" in err
