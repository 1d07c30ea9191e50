"""Remote-code exports carry each structure's own modules and load where lowrank_lm is not installed.

Every structure in the registry is exported (so a new one is covered without editing this file) and
loaded by transformers in a separate Python process in which ``import lowrank_lm`` fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lowrank_lm.config import FFNConfig
from lowrank_lm.export.remote_code import STRUCTURES_FILE, WRAPPER_FILES, standalone_files
from lowrank_lm.layers import registry

from .ecosystem import MODEL_VOCAB, cli, make_run, relative_error

transformers = pytest.importorskip("transformers")

# Runs in a fresh interpreter: lowrank_lm is made unimportable before transformers loads each folder.
LOAD_WITHOUT_LOWRANK_LM = """
import sys
sys.modules["lowrank_lm"] = None  # any `import lowrank_lm...` now raises ModuleNotFoundError
import torch, transformers
ids = torch.load(sys.argv[1])
logits = {}
for folder in sys.argv[3:]:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits[folder] = model(ids).logits
assert not [m for m in sys.modules if m.startswith("lowrank_lm.")]
torch.save(logits, sys.argv[2])
"""


def _export(run: Path, out: Path, *argv: str) -> None:
    code, _, err = cli("export", str(run), str(out), *argv)
    assert code == 0, err


def _py_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.py"))


def test_every_structure_exports_its_own_code_and_loads_without_lowrank_lm(tmp_path):
    kinds = registry.structured_kinds()
    ours, folders = {}, {}
    for i, kind in enumerate(kinds):
        ours[kind] = make_run(tmp_path / kind, [f"model.ffn.kind={kind}", "model.ffn.fraction=0.32"], seed=i)
        folders[kind] = tmp_path / f"{kind}-hf"
        _export(tmp_path / kind, folders[kind])

    # one folder first holds another structure's export, then --overwrite replaces it: no stale module stays
    first, last = kinds[0], kinds[-1]
    _export(tmp_path / first, folders[last], "--overwrite")
    _export(tmp_path / last, folders[last], "--overwrite")
    stale = {registry.module_file(first).name} - {registry.module_file(k).name for k in (last, registry.DENSE)}

    for kind, folder in folders.items():
        record = json.loads((folder / "lowrank_lm_export.json").read_text())
        assert sorted(record["files"]) == sorted(p.name for p in folder.iterdir())
        assert {*WRAPPER_FILES, STRUCTURES_FILE, registry.module_file(kind).name,
                registry.module_file(registry.DENSE).name} <= set(_py_files(folder))
        others = {registry.module_file(k).name for k in kinds if k != kind}
        assert not others & set(_py_files(folder))  # only the structures this model uses
    assert stale and not stale & set(_py_files(folders[last]))
    # structured attention projections (dense FFN) go through the same copied structure modules
    ours["attn"] = make_run(tmp_path / "attn", [f"model.attn.kind={first}", "model.attn.fraction=0.32"], seed=9)
    folders["attn"] = tmp_path / "attn-hf"
    _export(tmp_path / "attn", folders["attn"])
    assert registry.module_file(first).name in _py_files(folders["attn"])

    torch.manual_seed(0)
    ids = torch.randint(0, MODEL_VOCAB, (2, 32))
    torch.save(ids, tmp_path / "ids.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    done = subprocess.run([sys.executable, "-I", "-c", LOAD_WITHOUT_LOWRANK_LM, str(tmp_path / "ids.pt"),
                           str(tmp_path / "logits.pt"), *map(str, folders.values())],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = torch.load(tmp_path / "logits.pt")
    with torch.no_grad():
        for kind, folder in folders.items():
            err = relative_error(ours[kind](ids), theirs[str(folder)])
            assert err < 1e-4, f"{kind}: max logit difference {err:.2e} of the largest logit"


def test_the_export_leaves_no_bytecode_in_the_folder(tmp_path, monkeypatch):
    # the exporter imports the written files to check its weights against them: Python must not leave a
    # __pycache__ behind (this process may write bytecode, as a user's usually does)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    kind = registry.structured_kinds()[0]
    make_run(tmp_path / "run", [f"model.ffn.kind={kind}", "model.ffn.fraction=0.32"])
    _export(tmp_path / "run", tmp_path / "hf")
    record = json.loads((tmp_path / "hf" / "lowrank_lm_export.json").read_text())
    assert sorted(record["files"]) == sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert "__pycache__" not in record["files"] and sys.dont_write_bytecode is False


def test_the_wrapper_builds_structured_attention_projections(tmp_path):
    # the remote config's attn_kind / attn_<setting> size the q|k|v and output projections like the FFN's
    from lowrank_lm.export.remote.configuration_lowrank_lm import LowRankLMConfig
    from lowrank_lm.export.remote_code import load_remote_class, write_remote_code

    kind = next(k for k in registry.structured_kinds() if registry.get(k).settings == ("rank",))
    written = write_remote_code(tmp_path, [registry.DENSE, kind])
    assert sorted(written) == _py_files(tmp_path)
    cls = load_remote_class(tmp_path, "LowRankLMForCausalLM")
    config = LowRankLMConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=2, attn_kind=kind, attn_rank=8)
    attn = cls(config).model.blocks[0].attn
    ref = registry.get(kind).build(32, 96, FFNConfig(kind=kind, rank=8), True)
    assert {n: p.shape for n, p in attn.qkv.named_parameters()} == {n: p.shape for n, p in ref.named_parameters()}
    assert type(attn.qkv).__name__ == type(ref).__name__ and type(attn.qkv) is not type(ref)  # the copy, not ours
    dense = cls(LowRankLMConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                num_attention_heads=2)).model.blocks[0].attn
    assert set(dict(dense.qkv.named_parameters())) == {"weight", "bias"}  # unset: the dense baseline


@pytest.mark.parametrize("source,message", [
    ("from lowrank_lm.layers.base import StructuredLinear\n", "imports lowrank_lm"),
    ("import numpy\n", "imports numpy"),
    ("from . import base\n", "`from .name import ...`"),
    ("from ..layers.base import StructuredLinear\n", "`from .name import ...`"),
])
def test_a_module_an_export_cannot_copy_is_refused(tmp_path, source, message):
    (tmp_path / "base.py").write_text("import torch\n")
    (tmp_path / "mine.py").write_text("from .base import torch\n" + source)
    with pytest.raises(RuntimeError, match=message):
        standalone_files([tmp_path / "mine.py"])
    (tmp_path / "mine.py").write_text("from __future__ import annotations\nimport math\nfrom .base import torch\n")
    assert [p.name for p in standalone_files([tmp_path / "mine.py"])] == ["base.py", "mine.py"]
