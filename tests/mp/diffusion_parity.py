"""Block-diffusion parity driver: the objective trained through the runtime's own functions.

Run as ``python diffusion_parity.py OUT.json CHAT.jsonl TOKENIZER MASK_ID`` (one process) or under
torchrun with 2 processes (FSDP2 over the 2 gloo ranks): the same global batches from the real
loader (demo chats, mask-token tokenizer), noise drawn per global sample (noise_step), loss
normalised by the step's global count of masked tokens, clipping, AdamW. Rank 0 writes, per dtype
(fp32, fp64), each step's loss, gradient norm and masked-token count.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from runtime import dist as rdist, loss, model as models, optim
from runtime.data import Source, build_loader, load_tokenizer
from runtime.diffusion import loss_sum, noise_step
from runtime.parallel.fsdp import apply_fsdp

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "plans/models/tiny-qwen3-diffusion"
STEPS, GLOBAL_ROWS, MICRO, MAX_LEN, BLOCK, SEED, LR, CLIP = 3, 8, 2, 96, 8, 7, 3e-3, 1.0
NOISE = (0.3, 0.8)


def train(dtype: str, info, mesh, tok, sources, mask_id: int) -> dict:
    model = models.build_meta(CONFIG, dtype="fp32")
    if dtype == "fp64":
        model = model.to(torch.float64)  # still on the meta device
    apply_fsdp(model, mesh.fsdp, ["model.layers.*"])
    models.materialize(model, info.device, seed=SEED)
    opt = optim.build_optimizer(model, lr=LR, weight_decay=0.1, betas=(0.9, 0.95))
    loader = build_loader(sources, tok, max_len=MAX_LEN, pack="greedy", micro_batch=MICRO,
                          grad_accum=mesh.grad_accum(GLOBAL_ROWS, MICRO), dp_rank=mesh.dp_rank,
                          dp_size=mesh.dp_size, seed=SEED, chat_template="chatml", log=lambda m: None)
    batches = iter(loader)
    out = {"loss": [], "grad_norm": [], "tokens": []}
    for step in range(1, STEPS + 1):
        micro = noise_step(next(batches), mask_id=mask_id, noise=NOISE, seed=SEED, step=step, dp_rank=mesh.dp_rank)
        tokens = loss.count_targets(micro, mesh.loss_group)
        total = torch.zeros((), dtype=torch.float64)
        for batch in micro:
            micro_loss = loss_sum(model, batch, block=BLOCK)
            (micro_loss / tokens).backward()
            total += micro_loss.detach()
        grad_norm = optim.clip_grad_norm(model.parameters(), CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out["loss"].append(loss.step_loss(total, tokens, mesh.loss_group))
        out["grad_norm"].append(float(grad_norm))
        out["tokens"].append(tokens)
    return out


def main(out_path: str, chat: str, tokenizer: str, mask_id: str) -> None:
    torch.use_deterministic_algorithms(True)
    info = rdist.init("cpu")
    mesh = rdist.build_mesh(info, dp_shard=info.world)
    tok = load_tokenizer(tokenizer)
    sources = [Source(name="chat", path=chat, format="jsonl", kind="sft", messages="messages")]
    result = {"world": info.world}
    for dtype in ("fp32", "fp64"):
        result[dtype] = train(dtype, info, mesh, tok, sources, int(mask_id))
    if info.rank == 0:
        Path(out_path).write_text(json.dumps(result, indent=1))
    rdist.finish()


if __name__ == "__main__":
    main(*sys.argv[1:])
