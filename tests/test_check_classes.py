"""Classes of plans that `planc check` once accepted and the script then refused (or trained wrong),
one test per class, with the diagnostic's rule, place and hint; and the summary's batch line."""
from __future__ import annotations

import json

import pytest

from planc.frontend import check_file
from tests.planfix import TINY_LLAMA, TINY_QWEN3_MOE, base_plan, make_workspace


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    root = make_workspace(tmp_path_factory.mktemp("classes"))
    extra = {
        "gqa12x6": dict(TINY_LLAMA, hidden_size=48, intermediate_size=96, num_attention_heads=12,
                        num_key_value_heads=6, head_dim=4),
        "moe6x3": dict(TINY_QWEN3_MOE, hidden_size=48, num_attention_heads=6, num_key_value_heads=3),
        "mistral": {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 32,
                    "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 128, "max_position_embeddings": 256,
                    "sliding_window": 16, "tie_word_embeddings": False},
        "gpt2": {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 32, "n_layer": 2,
                 "n_head": 4, "n_positions": 32, "vocab_size": 128, "bos_token_id": 1, "eos_token_id": 2},
    }
    for name, cfg in extra.items():
        (root / name).mkdir(exist_ok=True)
        (root / name / "config.json").write_text(json.dumps(cfg))
    return root


def _check(ws, edits, name, **kw):
    text = base_plan(ws)
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = ws / f"{name}.veo"
    path.write_text(text)
    return check_file(str(path), **kw), text


def _at(text, locator):
    i = text.index(locator)
    return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1


def _errors(checked):
    return [d for d in checked.diagnostics if d.severity == "error"]


def test_container_gets_its_projections_as_the_hint(ws):
    checked, text = _check(ws, [("dp_shard = 2", "tp = 2"),
                                ('checkpoint "model.layers.*"', 'tp colwise "model.layers.*.self_attn"')], "container")
    errs = _errors(checked)
    assert [d.rule for d in errs] == ["tp-module"]  # not also tp-incomplete: one error for one mistake
    d = errs[0]
    assert (d.span.line, d.span.col) == _at(text, "tp colwise")
    assert "LlamaAttention" in d.message
    assert '`tp colwise "model.layers.*.self_attn.{q,k,v}_proj"`' in d.help
    assert '`tp rowwise "model.layers.*.self_attn.o_proj"`' in d.help


def test_model_plan_and_an_explicit_rule_on_one_module(ws):
    """`tp plan = model` already makes lm_head colwise: a second style for it is refused by apply_tp."""
    checked, text = _check(ws, [("dp_shard = 2", "tp = 2"),
                                ('checkpoint "model.layers.*"', 'tp plan = model\n  tp loss "lm_head"')], "overlap")
    errs = _errors(checked)
    assert [d.rule for d in errs] == ["rule-overlap"]
    assert (errs[0].span.line, errs[0].span.col) == _at(text, 'tp loss "lm_head"')
    assert "config's own plan" in errs[0].message


def test_ulysses_on_the_kv_heads_each_tp_rank_holds(ws):
    """12 heads over 6 KV heads: tp 2 leaves 3 KV heads per rank, which sp 2 cannot scatter (6 % 2 == 0
    on the model's totals, the rule the check used to apply)."""
    checked, text = _check(ws, [("/llama", "/gqa12x6"), ("dp_shard = 2", "tp = 2  sp = 2"),
                                ('checkpoint "model.layers.*"', 'tp plan = model\n  sp ulysses "model.layers.*.self_attn"')],
                           "localkv")
    errs = _errors(checked)
    assert [d.rule for d in errs] == ["sp-heads"]
    assert "3 KV heads" in errs[0].message and "choose sp among 3" in errs[0].help
    assert (errs[0].span.line, errs[0].span.col) == _at(text, "sp = 2")


def test_the_output_layer_of_the_models_own_plan_splits_the_vocabulary(ws):
    checked, text = _check(ws, [("/llama", "/oddvocab"), ("dp_shard = 2", "tp = 2"),
                                ('checkpoint "model.layers.*"', "tp plan = model")], "headvocab")
    errs = _errors(checked)
    assert [d.rule for d in errs] == ["tp-vocab"]
    assert "'lm_head'" in errs[0].message and "129" in errs[0].message
    assert (errs[0].span.line, errs[0].span.col) == _at(text, "tp plan = model")


def test_one_error_for_one_degree(ws):
    """tp 3 splits neither the heads nor the vocabulary: one tp-divides, naming both."""
    checked, _ = _check(ws, [("dp_shard = 2", "tp = 3"), ('checkpoint "model.layers.*"', "tp plan = model")], "tp3")
    errs = _errors(checked)
    assert [d.rule for d in errs] == ["tp-divides"]
    assert "4 attention heads (q_proj)" in errs[0].message and "2 KV heads (k_proj, v_proj)" in errs[0].message
    assert "vocabulary" in errs[0].message and errs[0].help == "choose tp among 2"


def test_moe_intermediate_size_is_not_split_by_tp(ws):
    """The dense intermediate_size of an MoE config belongs to no module: tp 3 only splits attention."""
    from planc.dryrun import dry_run

    checked, _ = _check(ws, [("/llama", "/moe6x3"), ("dp_shard = 2", "tp = 3"),
                             ('checkpoint "model.layers.*"', "tp plan = megatron")], "moetp3")
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]
    dry_run(checked)  # and the runtime agrees


def test_sp_names_a_decoder_layer(ws):
    checked, text = _check(ws, [("dp_shard = 2", "sp = 2"),
                                ('checkpoint "model.layers.*"', 'sp ulysses "model.layers.*"')], "spdecoder")
    errs = _errors(checked)
    assert [d.rule for d in errs] == ["sp-cover"]
    assert "LlamaDecoderLayer, not an attention module" in errs[0].message
    assert 'sp ulysses "model.layers.*.self_attn"' in errs[0].help


def test_eager_ulysses_is_accepted(ws):
    checked, _ = _check(ws, [("attention = sdpa", "attention = eager"), ("dp_shard = 2", "sp = 2"),
                             ('checkpoint "model.layers.*"', 'sp ulysses "model.layers.*.self_attn"')], "eager")
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]


def test_sliding_window_with_ulysses(ws):
    checked, text = _check(ws, [("/llama", "/mistral"), ("dp_shard = 2", "sp = 2"),
                                ('checkpoint "model.layers.*"', 'sp ulysses "model.layers.*.self_attn"')], "sliding")
    errs = _errors(checked)
    assert [d.rule for d in errs] == ["sp-attention"]
    assert "sliding windows of 16 tokens" in errs[0].message and errs[0].help == "use max_len <= 16"
    assert (errs[0].span.line, errs[0].span.col) == _at(text, "max_len   = 64")
    checked, _ = _check(ws, [("/llama", "/mistral"), ("dp_shard = 2", "sp = 2"), ("max_len   = 64", "max_len   = 16"),
                             ('checkpoint "model.layers.*"', 'sp ulysses "model.layers.*.self_attn"')], "sliding16")
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]


def test_learned_positions_bound_max_len(ws):
    checked, text = _check(ws, [("/llama", "/gpt2"), ('fsdp       "model.layers.*"', 'fsdp       "transformer.h.*"'),
                                ('checkpoint "model.layers.*"', 'checkpoint "transformer.h.*"')], "gpt2")
    errs = _errors(checked)
    assert [d.rule for d in errs] == ["max-len"]
    assert "32 positions" in errs[0].message
    assert (errs[0].span.line, errs[0].span.col) == _at(text, "max_len   = 64")


def test_flash_attention_is_told_apart_by_device(ws):
    checked, _ = _check(ws, [("attention = sdpa", "attention = flash_attention_2")], "flashcpu")
    assert [d.rule for d in _errors(checked)] == ["attention-device"]
    checked, _ = _check(ws, [("attention = sdpa", "attention = flash_attention_2"), ("device = cpu", "device = cuda")],
                        "flashcuda")
    assert checked.ok
    warn = [d for d in checked.diagnostics if d.rule == "attention-device"]
    assert warn and warn[0].severity == "warning" and warn[0].message.startswith("not checked")


def test_summary_batch_line_says_what_a_step_holds(ws):
    from planc.summary import summary_lines

    checked, _ = _check(ws, [("pack      = greedy", "pack      = dynamic { tokens = 512  warmup_steps = 3 }"),
                             ("micro_batch = 2", "micro_batch = 1")], "dynamic", skip_files=True)
    assert checked.ok, [(d.rule, d.message) for d in checked.diagnostics]
    batch = next(line for line in summary_lines(checked) if line.lstrip().startswith("batch"))
    assert "global_batch 8 micro-batches, each one row of up to 512 tokens" in batch
    assert "up to 4,096 tokens per step" in batch and "from 64 to 512 over the first 3 steps" in batch
    assert "rows of 64 tokens" not in batch
    lines = summary_lines(checked)
    assert any(line.startswith("  not checked the data and tokenizer files") for line in lines)
    checked, _ = _check(ws, [], "greedy", skip_files=True)
    batch = next(line for line in summary_lines(checked) if line.lstrip().startswith("batch"))
    assert "global_batch 8 rows of 64 tokens (512 tokens per step)" in batch


def test_memory_ceiling_yields_to_a_given_budget(ws):
    from planc.frontend import check_plan

    text = base_plan(ws).replace("max_len   = 64", "max_len   = 1000000000000")
    path = ws / "huge.veo"
    path.write_text(text)
    checked = check_plan(str(path), skip_files=True)  # what `planc check` and `planc compile` run
    assert [d.rule for d in _errors(checked)] == ["memory-ceiling"]
    assert "TiB" in _errors(checked)[0].message
    assert (_errors(checked)[0].span.line, _errors(checked)[0].span.col) == _at(text, "max_len   = 1000000000000")
    # a (hypothetical) device that holds it: --device-memory hands the decision to memory-budget
    checked = check_plan(str(path), skip_files=True, device_memory=2**70)
    assert _errors(checked) == []
