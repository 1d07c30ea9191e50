import pytest

from lowrank_lm.config import config_to_dict, read_dict, save_config
from lowrank_lm.errors import ConfigError
from lowrank_lm.layers import registry
from lowrank_lm.resolve import load_config

from .conftest import small_config


def test_defaults_are_the_papers():
    cfg = load_config(None)
    m, t = cfg.model, cfg.train
    assert (m.vocab_size, m.seq_len, m.norm, m.activation, m.bias, m.tie_embeddings) == \
        (32000, 1024, "layernorm", "gelu", True, True)
    assert (t.min_lr_ratio, t.warmup_ratio, t.weight_decay, t.betas, t.grad_clip, t.global_batch_size) == \
        (0.1, 0.1, 0.1, (0.9, 0.999), 1.0, 512)
    assert m.ffn.keep_dense_layers == [0]


@pytest.mark.parametrize("kind,settings,init", [("dense", [], "random"), ("lowrank", ["rank=16"], "spectral"),
                                                ("blockshuffle", ["num_blocks=4"], "orthonormal"),
                                                ("blockdense", ["rank=16", "num_blocks=4"], "orthonormal")])
def test_default_init_per_kind(kind, settings, init):
    cfg = small_config(f"model.ffn.kind={kind}", *(f"model.ffn.{s}" for s in settings))
    assert cfg.model.ffn.init == init


INAPPLICABLE = [
    (["model.ffn.rank=32"],
     "model.ffn.rank=32 does not apply to model.ffn.kind=dense (it has no size setting); remove it, or set "
     "model.ffn.kind to lowrank or blockdense"),
    (["model.ffn.kind=lowrank", "model.ffn.rank=16", "model.ffn.num_blocks=4"],
     "model.ffn.num_blocks=4 does not apply to model.ffn.kind=lowrank (it reads model.ffn.rank); remove it, "
     "or set model.ffn.kind to blockshuffle or blockdense"),
    (["model.ffn.kind=blockshuffle", "model.ffn.num_blocks=4", "model.ffn.rank=16"],
     "model.ffn.rank=16 does not apply to model.ffn.kind=blockshuffle (it reads model.ffn.num_blocks)"),
    (["model.ffn.init=spectral"],
     "model.ffn.init=spectral does not apply to model.ffn.kind=dense; use random or orthonormal or mup or "
     "zero_out (or leave it empty for random)"),
    (["model.ffn.kind=blockdense", "model.ffn.rank=16", "model.ffn.num_blocks=4", "model.ffn.init=spectral"],
     "model.ffn.init=spectral does not apply to model.ffn.kind=blockdense; use orthonormal or random or mup "
     "or zero_out"),
    (["model.ffn.premerge_max_tokens=8"], "model.ffn.premerge_max_tokens does not apply to model.ffn.kind=dense"),
]


@pytest.mark.parametrize("overrides,message", INAPPLICABLE)
def test_a_setting_the_kind_does_not_read_is_an_error_naming_what_it_reads(overrides, message):
    with pytest.raises(ConfigError) as err:
        small_config(*overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_init_a_kind_accepts_builds_and_reloads(tmp_path):
    for kind, settings in [("dense", []), ("lowrank", ["rank=16"]), ("blockshuffle", ["num_blocks=4"]),
                           ("blockdense", ["rank=16", "num_blocks=4"])]:
        for init in registry.get(kind).inits:
            cfg = small_config(f"model.ffn.kind={kind}", f"model.ffn.init={init}",
                               *(f"model.ffn.{s}" for s in settings))
            save_config(cfg, tmp_path / "c.yaml")
            assert load_config(tmp_path / "c.yaml") == cfg  # a saved config (init filled in) loads again


def test_overrides_and_base_files(tmp_path):
    cfg = load_config("configs/paper/structured/transformer-xl-lowrank-32.yaml", ["model.ffn.rank=256"])
    assert cfg.model.hidden_dim == 2048 and cfg.model.ffn.kind == "lowrank" and cfg.model.ffn.rank == 256
    assert cfg.train.lr == 2e-4
    assert load_config(None, ["train.tokens=2.2e9"]).train.tokens == 2_200_000_000
    read = read_dict({"model": {"hidden_dim": 8}}, ["model.ffn.kind=lowrank", "train.betas=[0.9, 0.95]"])
    assert (read.model.hidden_dim, read.model.ffn.kind, read.train.betas) == (8, "lowrank", (0.9, 0.95))
    assert read.model.num_layers == read_dict({}).model.num_layers  # the rest stays at the defaults


def test_save_and_reload_round_trip(tmp_path):
    cfg = small_config("model.ffn.kind=lowrank", "model.ffn.rank=8", "train.betas=[0.9, 0.95]")
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg
    assert config_to_dict(again)["train"]["betas"] == [0.9, 0.95]


BAD = [
    (["model.hidden_dimm=5"], "unknown config key model.hidden_dimm; did you mean model.hidden_dim?"),
    (["modle.hidden_dim=5"], "unknown config key modle; did you mean model?"),
    (["model.ffn.kind=lowrnk"], "did you mean 'lowrank'"),
    (["model.num_layers=two"], "model.num_layers: expected int"),
    (["model.num_layers=2.5"], "model.num_layers: expected a whole number"),
    (["model.bias=3"], "model.bias: expected bool"),
    (["model.ffn.kind=lowrank", "model.ffn.rank=100"], "model.ffn.rank=100 is larger than min"),
    (["model.ffn.kind=lowrank"], "model.ffn.rank is required"),
    (["model.num_q_heads=5"], "does not divide attn_dim=64"),
    (["model.num_kv_heads=3"], "not a multiple of model.num_kv_heads=3"),
    (["model.ffn.kind=blockshuffle", "model.ffn.num_blocks=3"], "num_blocks=3 does not divide"),
    (["model.ffn.kind=blockdense", "model.ffn.rank=30", "model.ffn.num_blocks=4"], "not divisible"),
    (["train.global_batch_size=10", "train.micro_batch_size=4"], "does not divide train.global_batch_size"),
    (["train.lr=-1"], "train.lr must be positive"),
    (["model.ffn.keep_dense_layers=[7]"], "keep_dense_layers: 7 is not a block index"),
    (["train.self_guided.enabled=true"], "self_guided needs a structured FFN"),
    (["model.ffn=3"], "model.ffn: expected a mapping"),
    (["model.ffn.kind"], "has no '='"),
    (["train.betas=[0.9]"], "train.betas: expected 2 values, got 1"),
    (["train.betas=[0.9, x]"], "train.betas[1]: expected float, got 'x'"),
    (["model.ffn.keep_dense_layers=[0.5]"], "model.ffn.keep_dense_layers[0]: expected a whole number, got 0.5"),
    (["model.ffn.keep_dense_layers=[a]"], "model.ffn.keep_dense_layers[0]: expected int, got 'a'"),
    (["data.tokenizer=true"], "data.tokenizer: expected str, got True"),
    (["data.source=[1]"], "data.source: expected str, got [1]"),
    (["train.out_dir=2024-01-01"], "train.out_dir: expected str, got datetime.date(2024, 1, 1)"),
    (["model.vocab_size="], "model.vocab_size: expected int, got None"),
    (["train.compile=yes please"], "train.compile: 'yes please' is not one of auto, True, False"),
    (["model.ffn.fraction=true"], "model.ffn.fraction: expected float, got True"),
    (["data.tokenizer=???"], "data.tokenizer: ??? is not a value"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_values_name_the_key_and_the_fix(overrides, message):
    with pytest.raises(ConfigError) as err:
        small_config(*overrides)
    text = str(err.value)
    assert message in text
    assert "\n" not in text


def test_text_is_never_interpolated_and_an_empty_section_is_its_defaults(tmp_path):
    (tmp_path / "c.yaml").write_text("model:\ndata: {source: 'a/${HOME}/b', tokenizer: '?${x}?'}\n")
    cfg = load_config(tmp_path / "c.yaml", ["train.out_dir=x\\${y}", "data.dir=${oops"])
    assert (cfg.data.source, cfg.data.tokenizer, cfg.train.out_dir, cfg.data.dir) == \
        ("a/${HOME}/b", "?${x}?", "x\\${y}", "${oops")
    assert cfg.model == load_config(None).model
    reset = load_config("configs/cpu/tiny.yaml", ["model.ffn.kind=lowrank", "model.ffn=", "model.hidden_dim=64"])
    assert reset.model.ffn == load_config(None).model.ffn and reset.model.hidden_dim == 64  # empty: the defaults
    save_config(cfg, tmp_path / "again.yaml")
    assert load_config(tmp_path / "again.yaml") == cfg


def test_sweep_files_are_read_by_the_same_engine(tmp_path):
    from lowrank_lm.errors import UserError
    from lowrank_lm.launch.sweep_file import BudgetsEntry, SizeEntry, read_sweep_file

    (tmp_path / "s.yaml").write_text("sizes: {a: x.yaml, 1: {overrides: [train.lr=1e-3]}}\n"
                                     "budgets: {flops: [1.2e13]}\nseeds: [1e3]\n"
                                     "cluster: {setup: ['cd ${HOME}/work'], nodes: 2, sbatch: {comment: '${x}'}}\n")
    sweep = read_sweep_file(tmp_path / "s.yaml")
    assert sweep.sizes == {"a": SizeEntry(config="x.yaml"), "1": SizeEntry(overrides=["train.lr=1e-3"])}
    assert sweep.budgets == BudgetsEntry(flops=[1.2e13]) and sweep.seeds == [1000] and sweep.structures == {}
    assert sweep.cluster == {"setup": ["cd ${HOME}/work"], "nodes": 2, "sbatch": {"comment": "${x}"}}  # text
    (tmp_path / "s.yaml").write_text("sizes: {a: {config: x.yaml, flop: [1]}}\n")
    with pytest.raises(UserError, match=r"s.yaml: unknown key sizes\.a\.flop; did you mean sizes\.a\.flops\?$"):
        read_sweep_file(tmp_path / "s.yaml")


def test_bad_files(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: {hidden_dim: 4\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")


def test_yaml_is_never_evaluated(tmp_path):
    (tmp_path / "evil.yaml").write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(tmp_path / "evil.yaml")


SMALL = ["model.vocab_size=97", "model.seq_len=32", "model.num_layers=2", "model.hidden_dim=64", "model.num_q_heads=4"]


def test_resolving_returns_a_new_config_and_leaves_the_read_one_as_it_was():
    import copy

    from lowrank_lm import sizing
    from lowrank_lm.config import read_config, validate
    from lowrank_lm.resolve import resolve

    read = read_config(None, [*SMALL, "model.ffn.kind=lowrank", "model.ffn.fraction=0.32",
                              "model.attn.kind=blockshuffle", "model.attn.fraction=0.5"])
    before = copy.deepcopy(read)
    validate(read)
    assert read == before  # validation changes nothing
    resolved = resolve(read)
    assert read == before and resolved is not read and resolved.model.ffn is not read.model.ffn
    ffn, attn = resolved.model.ffn, resolved.model.attn
    assert (ffn.rank, ffn.fraction, ffn.init) == (16, None, "spectral")  # 2 x 16 x 320 of 2 x 64 x 256: 31%
    solved, _ = sizing.solve(read.model, "blockshuffle", 0.5, part="attn")
    assert (attn.num_blocks, attn.fraction, attn.init) == (solved["num_blocks"], None, "orthonormal")
    assert resolve(resolved) == resolved  # a resolved config resolves to itself (it reloads unchanged)


def test_the_config_module_imports_no_layer_and_no_torch():
    import subprocess
    import sys

    code = ("import sys, lowrank_lm.config; bad = sorted(m for m in sys.modules if m == 'torch' or "
            "m.startswith(('lowrank_lm.layers', 'lowrank_lm.model', 'lowrank_lm.resolve'))); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("override,message", [
    ("model.ffn.kind=lowrnk", "model.ffn.kind: 'lowrnk' is not one of dense, lowrank, blockshuffle, blockdense, "
                              "btt, cola (did you mean 'lowrank'?)"),
    ("model.attn.init=spectrl", "model.attn.init: 'spectrl' is not one of random, orthonormal, mup, zero_out, "
                                "spectral, balanced (did you mean 'spectral'?)"),
])
def test_an_unknown_kind_or_init_is_named_with_a_did_you_mean(override, message):
    with pytest.raises(ConfigError) as err:
        small_config(override)
    assert str(err.value) == message
