"""Block diffusion (LLaDA2 / dFactory's objective): masks, noise, the training transform and
loss, a sampler, the mask token. One concern per module:

- mask.py       the (B, 1, 2L, 2L) training mask and the inference mask, in the kind the attention
                implementation takes
- noise.py      seeded per-document noise draws (the same in every layout and on resume)
- objective.py  planc's packed SFT batch -> [x_t ; x_0] with labels on the masked tokens; the loss
- sampler.py    block-by-block generation with confidence-based unmasking
- tokenizer.py  the mask token
- sample.py     text from an export or checkpoint (`sample.run`, for `planc sample`; imported on its own)
"""
from .mask import block_causal_mask, block_diffusion_mask, mask_kind
from .noise import check_noise
from .objective import loss_sum, noise_batch, noise_step, response_mask
from .sampler import generate
from .tokenizer import MASK_TOKEN, add_mask_token, mask_token_id

__all__ = ["block_causal_mask", "block_diffusion_mask", "mask_kind", "check_noise", "loss_sum",
           "noise_batch", "noise_step", "response_mask", "generate", "MASK_TOKEN", "add_mask_token",
           "mask_token_id"]
