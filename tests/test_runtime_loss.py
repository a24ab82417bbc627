"""runtime.loss: summed token loss, global-token normalisation, and the gradient it implies."""
import pytest
import torch
import torch.nn.functional as F

from runtime import loss

IGNORE = loss.IGNORE


def test_cross_entropy_sum_is_mean_times_count_and_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, 3:] = IGNORE
    n = int((labels != IGNORE).sum())
    mean = F.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), ignore_index=IGNORE)
    assert loss.cross_entropy_sum(logits, labels).item() == pytest.approx(mean.item() * n, rel=1e-6)
    empty = torch.full((1, 4), IGNORE)  # an all-padding micro-batch adds 0, not NaN
    assert loss.cross_entropy_sum(torch.randn(1, 4, 11), empty).item() == 0.0


def test_cross_entropy_sum_upcasts_half_logits():
    logits = torch.randn(1, 3, 7).bfloat16()
    labels = torch.tensor([[1, 2, 3]])
    ref = F.cross_entropy(logits.float().reshape(-1, 7), labels.reshape(-1), reduction="sum")
    out = loss.cross_entropy_sum(logits, labels)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(ref.item(), rel=1e-6)


def test_count_targets_and_step_loss_without_a_process_group():
    mbs = [{"labels": torch.tensor([[1, IGNORE, 2]])}, {"labels": torch.tensor([[IGNORE, IGNORE, 5]])}]
    assert loss.count_targets(mbs) == 3
    assert loss.step_loss(torch.tensor(6.0, dtype=torch.float64), 3) == 2.0
    with pytest.raises(RuntimeError, match="no target tokens"):
        loss.count_targets([{"labels": torch.full((1, 3), IGNORE)}])


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Embedding(13, 6), torch.nn.Linear(6, 13))


def _grad_of_partition(parts, n_global):
    """Sum over 'ranks' of the gradients of sum_micro(loss_sum / n_global): FSDP's summed reduction."""
    total = None
    for rank_batches in parts:
        m = _model()
        for ids, labels in rank_batches:
            (loss.cross_entropy_sum(m(ids), labels) / n_global).backward()
        g = [p.grad.clone() for p in m.parameters()]
        total = g if total is None else [a + b for a, b in zip(total, g)]
    return total


def test_global_token_normalisation_gives_the_full_batch_gradient():
    torch.manual_seed(1)
    ids = torch.randint(0, 13, (8, 9))
    labels = torch.randint(0, 13, (8, 9))
    labels[0, 2:] = IGNORE          # rows with very different target counts: a per-micro-batch
    labels[5, :7] = IGNORE          # mean would weigh these rows' tokens differently
    n = int((labels != IGNORE).sum())
    m = _model()
    F.cross_entropy(m(ids).reshape(-1, 13), labels.reshape(-1), ignore_index=IGNORE).backward()
    ref = [p.grad for p in m.parameters()]
    rows = [(ids[i:i + 2], labels[i:i + 2]) for i in range(0, 8, 2)]
    layouts = {
        "1 rank x 4 micro": [rows],
        "2 ranks x 2 micro": [rows[:2], rows[2:]],
        "4 ranks x 1 micro": [[r] for r in rows],
    }
    for name, parts in layouts.items():
        for a, b in zip(_grad_of_partition(parts, n), ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
    # the per-micro-batch mean (what HF's loss would give) is NOT the same gradient here
    m = _model()
    for ids_mb, labels_mb in rows:
        (F.cross_entropy(m(ids_mb).reshape(-1, 13), labels_mb.reshape(-1), ignore_index=IGNORE) / 4).backward()
    assert not torch.allclose(m[1].weight.grad, ref[1], rtol=1e-3)


def test_lm_loss_sum_matches_hf_loss_on_a_tiny_llama(tiny_llama):
    from transformers import AutoModelForCausalLM
    from runtime.model import load_config
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(load_config(tiny_llama))
    ids = torch.randint(3, 4096, (2, 16))
    labels = torch.cat([ids[:, 1:], torch.full((2, 1), IGNORE)], dim=1)  # pre-shifted targets
    batch = {"input_ids": ids, "labels": labels, "position_ids": torch.arange(16).repeat(2, 1)}
    ours = loss.lm_loss_sum(model, batch)
    hf = model(input_ids=ids, labels=ids, use_cache=False).loss  # HF shifts internally, mean over 2*15
    assert ours.item() == pytest.approx(hf.item() * 30, rel=1e-5)
