"""The command line: JSON contract of `info` and one-line errors with exit code 2."""

import json
import subprocess
import sys

import pytest

from lowrank_lm.cli import main


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def test_info_json_has_the_contract_keys(capsys):
    code, out, _ = run_cli(capsys, "info", "configs/paper/transformer-xl.yaml", "model.ffn.kind=lowrank",
                           "model.ffn.rank=512", "--json")
    assert code == 0
    info = json.loads(out)
    for key in ("params", "params_non_embedding", "params_ffn", "train_tokens", "train_flops", "flops_per_token"):
        assert key in info
    assert round(info["params"] / 1e6) == 744
    assert f"{info['train_flops']:.2e}" == "1.29e+20"


def test_info_text(capsys):
    code, out, _ = run_cli(capsys, "info", "configs/cpu/tiny.yaml")
    assert code == 0
    assert "params" in out and "training FLOPs" in out


@pytest.mark.parametrize("argv,message", [
    (["info", "configs/cpu/tiny.yaml", "model.ffn.kind=lowrank", "model.ffn.rank=4096"], "model.ffn.rank=4096"),
    (["info", "nope.yaml"], "config file not found"),
    (["info", "configs/cpu/tiny.yaml", "model.hiden_dim=3"], "did you mean model.hidden_dim"),
    (["info"], "the following arguments are required"),
    (["frobnicate"], "unknown verb 'frobnicate'; choose one of"),
])
def test_user_errors_are_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out == ""


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "lowrank_lm", "info", "configs/cpu/tiny.yaml", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["params"] > 0
