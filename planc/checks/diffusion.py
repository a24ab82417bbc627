"""Block-diffusion rules (`train.objective = block_diffusion`, runtime/diffusion/): the block tiles a
row, the tokenizer has the mask token, the attention takes a 4-D mask, no layout slices the doubled
row, the data has responses to mask, and the loss is the objective's own. Also the note that a
trusted model directory's code runs (`model.trust_remote_code`)."""
from __future__ import annotations

import functools

from runtime.diffusion.mask import MASK_KINDS
from runtime.vocab import ATTENTIONS

RULES = {
    "diffusion-block": "block diffusion: the block divides data.max_len (rows are whole blocks)",
    "diffusion-mask-token": "block diffusion: the tokenizer has the mask token as one token, inside the model's "
                            "vocabulary",
    "diffusion-attention": "block diffusion: attention takes a 4-D mask (sdpa: bool; eager: additive float; "
                           "flash attention takes none)",
    "diffusion-layout": "block diffusion: no sequence sharding (Ulysses sp, `tp sequence`): the [x_t ; x_0] row "
                        "and its mask are not sliced",
    "diffusion-data": "block diffusion: every source is sft (the objective masks response tokens)",
    "diffusion-loss": "block diffusion computes its own loss: no fused_ce kernel, no `tp loss`, no MoE "
                      "load-balancing loss, no (next-token) validation loss",
}


def uses_diffusion(plan) -> bool:
    return "train.objective" in plan.settings and plan["train.objective"] == "block_diffusion"


def check(ctx) -> None:
    p = ctx.plan
    if ctx.tree is not None and p["model.trust_remote_code"]:
        ctx.notes.append(f"remote code: trust_remote_code = true: planc check and the script run the modeling "
                         f"code shipped in {ctx.tree.path}")
    if not uses_diffusion(p) or "data" not in p.blocks:
        return
    where = p.value_span("train.objective")
    low, high = p["train.noise"]
    ctx.notes.append(f"objective: block diffusion, blocks of {p['train.block']} tokens, noise t ~ U[{low:g}, {high:g}], "
                     f"mask token {p['train.mask_token']!r}; rows run doubled ([x_t ; x_0], 2 x max_len)")
    block, max_len = p["train.block"], p["data.max_len"]
    if block and max_len and max_len % block:
        ctx.error("diffusion-block", f"block = {block} does not divide max_len = {max_len}",
                  p.span("train.block") if p.settings["train.block"].written else where,
                  f"pick a block that divides {max_len} (e.g. {_divisor(max_len, block)}), or change max_len")
    attention = p["model.attention"]
    if attention not in MASK_KINDS:
        ctx.error("diffusion-attention", f"attention = {attention} takes no 4-D attention mask; block diffusion "
                  "needs one (noisy tokens see their block, clean tokens the blocks before)",
                  p.value_span("model.attention"), "use `attention = sdpa` (eager works too: it gets an additive "
                  f"float mask); known: {', '.join(ATTENTIONS)}")
    for r in p.rules:
        if (r.kind == "tp" and r.style == "sequence") or r.kind == "sp":
            ctx.error("diffusion-layout", f"`{r.kind}{' sequence' if r.kind == 'tp' else ''}` shards the sequence; "
                      "block diffusion attends over the whole doubled row", r.span, "drop the rule")
        if r.kind == "tp" and r.style == "loss":
            ctx.error("diffusion-loss", "`tp loss` leaves the logits vocab-sharded for a loss-parallel "
                      "cross-entropy; block diffusion computes its loss from whole logits", r.span,
                      "drop the `tp loss` rule (colwise/rowwise stay)")
    for s in p.sources:
        if s["kind"] != "sft":
            ctx.error("diffusion-data", f"source {s.name!r} is {s['kind']}: block diffusion masks response tokens, "
                      "so it trains on conversations", s.settings["kind"].span or s.span, "write `kind = sft`")
    if "kernels" in p.blocks and p["kernels.fused_ce"] != "off":
        ctx.error("diffusion-loss", "fused_ce computes the next-token loss; block diffusion scores the masked "
                  "tokens of the noisy half itself", p.span("kernels.fused_ce"), "write `fused_ce = off`")
    if p.settings.get("train.moe_aux_loss") is not None and p.settings["train.moe_aux_loss"].written:
        ctx.error("diffusion-loss", "block diffusion trains without the MoE load-balancing loss (as dFactory "
                  "trains LLaDA2; transformers computes it from a 2-D mask)", p.span("train.moe_aux_loss"),
                  "drop moe_aux_loss")
    if "validation" in p.blocks:
        ctx.error("diffusion-loss", "the validation block computes a next-token loss, which says nothing about a "
                  "block-diffusion model (its loss depends on the sampled noise)", p.blocks["validation"],
                  "drop the validation block; check the model with `planc sample` on its export")
    _mask_token(ctx)


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str):
    from runtime.data import load_tokenizer

    return load_tokenizer(path)


def _divisor(max_len: int, block: int) -> int:
    return max(d for d in range(1, min(block, max_len) + 1) if max_len % d == 0)


def _mask_token(ctx) -> None:
    p = ctx.plan
    if ctx.skip_files or p["data.tokenizer"] is None:
        return
    token = p["train.mask_token"]
    span = p.value_span("train.mask_token") if p.settings["train.mask_token"].written else p.value_span("train.objective")
    try:
        tok = _load_tokenizer(p["data.tokenizer"])
    except Exception:  # noqa: BLE001 - the data pass reports a tokenizer that does not load
        return
    from runtime.diffusion.tokenizer import mask_token_id

    try:
        mask_id = mask_token_id(tok, token)
    except ValueError:
        ctx.error("diffusion-mask-token", f"the tokenizer at {p['data.tokenizer']} has no single token {token!r}",
                  span, "add it (runtime.diffusion.add_mask_token, or `planc demo-data --diffusion` for the demo)")
        return
    vocab = getattr(ctx.tree.text_config, "vocab_size", None) if ctx.tree is not None else None
    if vocab is not None and mask_id >= vocab:
        ctx.error("diffusion-mask-token", f"the mask token {token!r} has id {mask_id}, past the model's "
                  f"vocab_size {vocab}", span, "use a config whose vocab_size covers the mask token")
