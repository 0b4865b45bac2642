"""The Hugging Face PyTorch side of the train-step benchmark: `BertForPreTraining` (SDPA
attention) + `torch.optim.AdamW` + `clip_grad_norm_` on our synthetic batch, on the CPU
or a CUDA GPU, eager or under `torch.compile`, in float32 or under bfloat16 autocast."""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import ml_collections
import numpy as np


class HfRunner(NamedTuple):
    run: Callable[[int], int]  # runs n steps, waits until they are done, returns n
    loss: Callable[[], float]  # the last step's loss
    first_call_s: float  # seconds of the warm-up steps (with torch.compile: its compile)


def hf_runner(config: ml_collections.ConfigDict, batch_np: dict[str, np.ndarray],
              warmup: int, device: str = "cpu", threads: int = 0, bf16_autocast: bool = False,
              fused_adamw: bool = False, compile_model: bool = False) -> HfRunner:
    """HF's train step on `batch_np` (labels -100 except at the masked positions, as our
    batch), seeded, warmed up by `warmup` steps."""
    import torch
    import transformers

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    opt = config.optimizer
    hf_config = transformers.BertConfig(**config.model.to_dict(), attn_implementation="sdpa")
    model = transformers.BertForPreTraining(hf_config).train().to(device)
    adamw = torch.optim.AdamW(model.parameters(), lr=opt.learning_rate, betas=(opt.b1, opt.b2),
                              eps=opt.eps, weight_decay=opt.weight_decay,
                              fused=fused_adamw or None)
    forward = torch.compile(model) if compile_model else model
    labels = np.full(batch_np["input_ids"].shape, -100, np.int64)  # [B, S]
    np.put_along_axis(labels, batch_np["masked_positions"], batch_np["masked_ids"], axis=1)
    inputs = {name: torch.from_numpy(batch_np[name].astype(np.int64)).to(device)
              for name in ("input_ids", "token_type_ids", "attention_mask",
                           "next_sentence_label")}
    inputs["labels"] = torch.from_numpy(labels).to(device)
    autocast = torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16_autocast)
    last_loss = [None]

    def run(n: int) -> int:
        for _ in range(n):  # no host sync inside the loop: the loss is read when asked
            adamw.zero_grad(set_to_none=True)
            with autocast:
                loss = forward(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip_norm)
            adamw.step()
            last_loss[0] = loss.detach()
        if device != "cpu":
            torch.cuda.synchronize(device)
        return n

    start = time.perf_counter()
    run(warmup)
    return HfRunner(run, lambda: float(last_loss[0]), time.perf_counter() - start)
