"""`planc import` logic: VeOmni YAML configs (written here, both key generations, a mixture YAML,
command-line overrides) become plans that `planc check` accepts, and every setting that does not
carry over is reported at its YAML line."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from launch import REPO
from planc.importer import ImportError_, import_veomni


def _write(path, text):
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def _has(text, expected) -> bool:
    """`expected` in `text`, whatever the column alignment planc fmt chose."""
    return " ".join(expected.split()) in " ".join(text.split())


def _check(tmp_path, text, *extra):
    plan = tmp_path / "imported.veo"
    plan.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "planc", "check", str(plan), *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture
def sft_yaml(tmp_path, demo_assets):
    return _write(tmp_path / "qwen3_sft.yaml", f"""
        model:
          model_path: {REPO / "plans/models/tiny-qwen3"}
          tokenizer_path: {demo_assets["tokenizer"]}
          ops_implementation:
            attn_implementation: flash_attention_2
            rms_norm_implementation: liger_kernel
            cross_entropy_loss_implementation: chunk_loss
        data:
          train_path: {demo_assets["chat"]}
          data_type: conversation
          chat_template: chatml
          max_seq_len: 512
          train_size: 2000000
          eval_path: {demo_assets["chat"]}
        train:
          accelerator:
            ulysses_size: 2
            fsdp_config:
              fsdp_mode: fsdp2
            offload_config:
              enable_activation: true
          gradient_checkpointing:
            enable: true
          global_batch_size: 16
          micro_batch_size: 2
          optimizer:
            lr: 1.0e-4
            lr_decay_style: cosine
            lr_warmup_ratio: 0.05
            max_grad_norm: 1.0
          num_train_epochs: 2
          init_device: meta
          checkpoint:
            output_dir: out/qwen3-sft
            save_steps: 100
          wandb:
            project: VeOmni
        """)


def test_new_generation_sft_config(sft_yaml, tmp_path):
    r = import_veomni(sft_yaml, ["--train.optimizer.lr", "2e-4", "--train.seed=7"], world=8)
    text = r.text
    for expected in ('source "train"', "kind = sft", "chat_template = chatml", "max_len       = 512",
                     "pack          = dynamic { tokens = 1024 }", "global_batch = 8", "micro_batch  = 1",
                     "lr = 0.0002", "seed         = 7", "sp ulysses \"model.layers.*.self_attn\"",
                     "checkpoint \"model.layers.*\"", "offload \"model.layers.*\"", "mixed_precision { param = bf16  reduce = fp32 }",
                     "dp_shard = 4", "every  = 100", "rmsnorm  = auto", "fused_ce = torch", "attention = sdpa"):
        assert _has(text, expected), expected
    # VeOmni's own step count: epochs x ceil(train_size / (global_batch_size x max_seq_len))
    assert _has(text, "steps = 490")
    notes = {n.key: n for n in r.notes}
    at = {key: n.where for key, n in notes.items()}
    assert "data.eval_path" not in at and _has(text, 'source "eval"')  # the held-out set is the validation block
    assert at["train.wandb.project"] == f"{sft_yaml}:37:5"
    assert "sdpa" in notes["model.ops_implementation.attn_implementation"].message  # flash + Ulysses
    assert "train.init_device" in at  # harmless, but still reported
    for n in r.notes:
        assert f"#   {n}" in text  # each one is a comment in the plan as well
    out = _check(tmp_path, text)
    assert "world 8 = dp_shard 4 x sp 2" in out


def test_old_generation_pretrain_moe_config(tmp_path, demo_assets):
    cfg = _write(tmp_path / "moe.yaml", f"""
        model:
          model_path: {REPO / "plans/models/tiny-qwen3-moe"}
          tokenizer_path: {demo_assets["tokenizer"]}
          attn_implementation: sdpa
          moe_implementation: fused
        data:
          train_path: {demo_assets["jsonl"]}
          data_type: plaintext
          text_keys: text
          max_seq_len: 256
          train_size: 1000000
        train:
          output_dir: out/moe
          data_parallel_mode: fsdp1
          expert_parallel_size: 2
          global_batch_size: 8
          micro_batch_size: 1
          dyn_bsz: false
          lr: 3.0e-4
          lr_min: 3.0e-5
          lr_decay_style: cosine
          weight_decay: 0.1
          enable_mixed_precision: false
          enable_gradient_checkpointing: false
          save_steps: 0
          save_hf_weights: false
          use_wandb: false
          ckpt_manager: bytecheckpoint
        """)
    r = import_veomni(cfg, world=4)
    text = r.text
    for expected in ('ep "model.layers.*.mlp.experts"', "dp_shard = 4", "pack      = none", "global_batch = 8",
                     "min_lr = 0.1", "weight_decay = 0.1", "export = none", "moe = auto", 'text = "text"'):
        assert _has(text, expected), expected
    body = text[text.index('plan "'):]  # without the header of notes
    assert "mixed_precision" not in body and 'checkpoint "' not in body and "every" not in body
    keys = {n.key for n in r.notes}
    assert {"train.data_parallel_mode", "train.weight_decay", "train.save_steps",
            "train.ckpt_manager", "data.train_size"} <= keys
    assert "tracker" not in body  # use_wandb: false
    _check(tmp_path, text)


def test_mixture_yaml_and_ddp(tmp_path, demo_assets):
    _write(tmp_path / "mix.yaml", f"""
        sources:
        - {demo_assets["jsonl"]}
        - {demo_assets["jsonl"]}
        names:
        - code-a
        - code.b
        schedule:
        - schedule_type: const
          weights: [0.3, 0.7]
        """)
    cfg = _write(tmp_path / "mixed.yaml", f"""
        model:
          model_path: {REPO / "plans/models/tiny-llama"}
          tokenizer_path: {demo_assets["tokenizer"]}
          ops_implementation:
            attn_implementation: sdpa
        data:
          train_path: mix.yaml
          data_type: plaintext
          text_keys: text
          max_seq_len: 128
        train:
          accelerator:
            fsdp_config:
              fsdp_mode: ddp
          global_batch_size: 4
          max_steps: 20
        """)
    r = import_veomni(cfg, world=2, name="mixed")
    assert 'source "code_a"' in r.text and 'source "code_b"' in r.text
    assert "weight = 0.3" in r.text and "weight = 0.7" in r.text
    assert "replicate" in r.text and _has(r.text, "dp_replicate = 2") and _has(r.text, "steps = 20")
    _check(tmp_path, r.text)


LOOP_YAML = """
    model:
      model_path: {model}
      tokenizer_path: {tokenizer}
      attn_implementation: sdpa
      lora_config:
        rank: 4
        alpha: 16
        lora_modules: [q_proj, k_proj]
        use_rslora: true
    data:
      train_path: {jsonl}
      data_type: plaintext
      text_keys: text
      max_seq_len: 128
    train:
      global_batch_size: 4
      max_steps: 10
      {loop}
    """


@pytest.mark.parametrize("generation", ["new", "old"])
def test_lora_trackers_and_profiling_carry_over(tmp_path, demo_assets, generation):
    loop = {"new": "wandb: {enable: true, project: mine}\n      profile: {enable: true, start_step: 3, end_step: 5, "
                   "with_stack: false}",
            "old": "use_wandb: true\n      use_tensorboard: true\n      enable_profiling: true\n      "
                   "profile_start_step: 3\n      profile_end_step: 5"}[generation]
    cfg = _write(tmp_path / "loop.yaml", LOOP_YAML.format(model=REPO / "plans/models/tiny-llama", loop=loop,
                                                          tokenizer=demo_assets["tokenizer"], jsonl=demo_assets["jsonl"]))
    r = import_veomni(cfg, world=2)
    for expected in ('lora "**.q_proj" "**.k_proj" rank = 4 alpha = 16.0 dropout = 0.0', "tracker = wandb",
                     "profile { first = 3  steps = 2 }"):
        assert _has(r.text, expected), (expected, r.text)
    at = {n.key: n.where for n in r.notes}
    assert at["model.lora_config.use_rslora"] == f"{cfg}:9:5"
    assert ("train.wandb.project" if generation == "new" else "train.use_tensorboard") in at
    assert {k for k in at if k.startswith(("train.profile", "train.enable_profiling", "model.lora_config.r"))} == (
        {"train.profile.with_stack"} if generation == "new" else set()), at
    _check(tmp_path, r.text)
    # a command line gives the LoRA config as one JSON value; no targets: peft's defaults, said so
    r = import_veomni(cfg, ['--model.lora_config={"r": 2}'], world=2)
    assert _has(r.text, 'lora "**.q_proj" "**.v_proj" rank = 2 alpha = 8.0'), r.text
    assert any(n.key == "model.lora_config" and "defaults" in n.message for n in r.notes)


def test_unreadable_configs_raise_located_errors(tmp_path):
    with pytest.raises(ImportError_, match="names no model"):
        import_veomni(_write(tmp_path / "a.yaml", "data:\n  train_path: x.jsonl\n"))
    with pytest.raises(ImportError_, match="not valid YAML"):
        import_veomni(_write(tmp_path / "b.yaml", "model: [unclosed\n"))
    with pytest.raises(ImportError_, match="expected a mapping"):
        import_veomni(_write(tmp_path / "c.yaml", "- a\n- b\n"))
    with pytest.raises(ImportError_, match="has no value"):
        import_veomni(_write(tmp_path / "d.yaml", "model:\n  model_path: m\n"), ["--train.lr"])
    with pytest.raises(ImportError_, match="data_type 'dpo'"):
        import_veomni(_write(tmp_path / "e.yaml", "model:\n  model_path: m\ndata:\n  train_path: x\n"
                                                  "  data_type: dpo\n"), world=2)


def test_planc_import_writes_the_plan_with_overrides(sft_yaml, tmp_path, capsys):
    from planc.cli import main

    out = tmp_path / "imported.veo"
    assert main(["import", str(sft_yaml), "-o", str(out), "--world", "8", "--train.seed=7"]) == 0
    text = out.read_text()
    assert text == import_veomni(sft_yaml, ["--train.seed=7"], world=8).text and "seed" in text
    assert "init_device" in capsys.readouterr().err  # the notes go to stderr
    assert main(["import", str(tmp_path / "absent.yaml")]) == 1
