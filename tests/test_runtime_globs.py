"""runtime.parallel.globs: `*`, `**`, `?`, `{a,b}` over dotted module names."""
import subprocess
import sys

import pytest

from runtime.parallel.globs import GlobError, match_modules, matches

NAMES = [
    "model", "model.embed_tokens", "model.layers", "model.layers.0", "model.layers.0.self_attn",
    "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj",
    "model.layers.0.self_attn.o_proj", "model.layers.0.mlp", "model.layers.0.mlp.gate_proj",
    "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj", "model.layers.1", "model.layers.10",
    "model.layers.10.mlp", "model.norm", "lm_head",
]


@pytest.mark.parametrize("pattern, expected", [
    ("model.layers.*", ["model.layers.0", "model.layers.1", "model.layers.10"]),
    ("model.layers.?", ["model.layers.0", "model.layers.1"]),
    ("model.layers.*.self_attn.{q,k,v}_proj",
     ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"]),
    ("model.layers.*.mlp.{gate,up}_proj", ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]),
    ("**.mlp", ["model.layers.0.mlp", "model.layers.10.mlp"]),
    ("model.**.o_proj", ["model.layers.0.self_attn.o_proj"]),
    ("model.**.layers", ["model.layers"]),          # `**` may match no part at all
    ("lm_head", ["lm_head"]),
    ("{lm_head,model.norm}", ["model.norm", "lm_head"]),
    ("model.layers.1*", ["model.layers.1", "model.layers.10"]),
    ("model.layers", ["model.layers"]),              # whole-name match, not a prefix
    ("layers.*", []),                                # anchored at the start
    ("model.layers.*.mlp.*_proj.weight", []),
])
def test_patterns(pattern, expected):
    assert match_modules(NAMES, pattern) == expected


def test_star_stays_within_one_part_and_dots_are_literal():
    assert not matches("model.layers.0.mlp", "model.*")
    assert matches("model.layers", "model.*")
    assert not matches("modelXlayers", "model.layers")
    assert matches("a+b.c", "a+b.*")  # regex metacharacters are plain characters


def test_root_never_matches_and_modules_are_accepted():
    import torch
    m = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.ReLU()))
    assert match_modules(m, "*") == ["0", "1"]
    assert match_modules(m, "**") == ["0", "1", "1.0"]


@pytest.mark.parametrize("bad", ["model.{a,b", "model.a}", "{a,{b}}", ""])
def test_malformed_globs_raise(bad):
    with pytest.raises(GlobError):
        matches("model", bad)


def test_globs_module_does_not_import_torch():
    code = "import sys, runtime.parallel.globs; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
