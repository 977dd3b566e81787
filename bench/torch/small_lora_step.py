"""The bench's `small` GPT-2 steps in PyTorch: the reference `pnpm bench` compares @lora with.

Same model and step as bench/lib/gpt2.mjs and bench/lib/variants.mjs: GPT-2 shape (Conv1D
weights [in, out], pre-norm blocks, gelu_new, tied LM head, dropout off), byte vocabulary 257,
d_model 256, 4 layers, 4 heads, batch 8 x 128; `lora` = LoRA r=8, alpha=16 on attn.c_attn and
attn.c_proj (PEFT's formula: y = x W + b + (alpha/r) x A^T B^T, B zero-initialised), `full` = every
parameter trained, both with AdamW (lr 1e-3, weight decay 0.01) and gradient clipping at norm 1
as core's train(); `forward` = the loss in eval mode without gradients.

    python3 bench/torch/small_lora_step.py [--threads 1] [--steps 3] [--variants forward,lora,full]

Prints one JSON object on its last stdout line: {"torch": version, "threads": n, "blas": library,
"rows": [{variant, stepMs}]}. `blas` is the BLAS library the process loaded (Debian's python3-torch
uses whichever libblas.so.3 is selected: the reference BLAS is ~40x slower than OpenBLAS, so the
report names it).
Median of `steps` steps after two warm-up steps (a process's first steps also pay for its first
allocations: one warm-up left the first variant's steps ~3x slower). Plain PyTorch only (no transformers, no peft).
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

WARMUP = 2
CONFIG = dict(vocab=257, positions=128, d=256, layers=4, heads=4, batch=8, seq=128)


class Conv1D(nn.Module):
    """transformers' Conv1D: weight [in, out]."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out) * 0.02)
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], -1)


class LoraConv1D(nn.Module):
    """PEFT's LoRA around a Conv1D (fan_in_fan_out): base(x) + scale * (x A^T) B^T."""

    def __init__(self, base, r=8, alpha=16):
        super().__init__()
        self.base = base
        n_in, n_out = base.weight.shape
        self.lora_A = nn.Parameter(torch.empty(r, n_in))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(n_out, r))
        self.scale = alpha / r

    def forward(self, x):
        return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = Conv1D(d, 3 * d)
        self.attn_c_proj = Conv1D(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = Conv1D(d, 4 * d)
        self.mlp_c_proj = Conv1D(4 * d, d)

    def forward(self, x, mask):
        b, t, d = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        split = lambda z: z.view(b, t, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(q), split(k), split(v)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(d // self.heads) + mask
        attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.attn_c_proj(attended)
        return x + self.mlp_c_proj(gelu_new(self.c_fc(self.ln_2(x))))


class Gpt2(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.wte = nn.Embedding(c["vocab"], c["d"])
        self.wpe = nn.Embedding(c["positions"], c["d"])
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.02)
        self.h = nn.ModuleList(Block(c["d"], c["heads"]) for _ in range(c["layers"]))
        self.ln_f = nn.LayerNorm(c["d"])
        mask = torch.full((c["seq"], c["seq"]), -1e9).triu(1)
        self.register_buffer("mask", mask)

    def forward(self, ids):
        t = ids.shape[1]
        x = self.wte(ids) + self.wpe(torch.arange(t))
        for block in self.h:
            x = block(x, self.mask[:t, :t])
        return self.ln_f(x) @ self.wte.weight.t()  # tied head


def loss_of(model, ids):
    logits = model(ids)
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def batches(c, count=2, seed=7):
    """The same byte pattern as bench/lib/gpt2.mjs's makeBatches (an LCG: mostly a-z, some noise)."""
    state = seed
    out = []
    for _ in range(count):
        values = []
        for i in range(c["batch"] * c["seq"]):
            state = (state * 1664525 + 1013904223) % 2**32
            if state % 5 == 0:
                state = (state * 1664525 + 1013904223) % 2**32
                values.append(state % c["vocab"])
            else:
                values.append((97 + i % 26) % c["vocab"])
        out.append(torch.tensor(values, dtype=torch.long).view(c["batch"], c["seq"]))
    return out


def run(variant, steps):
    torch.manual_seed(1)
    model = Gpt2(CONFIG)
    data = batches(CONFIG)
    if variant == "lora":
        for p in model.parameters():
            p.requires_grad_(False)
        for block in model.h:
            block.c_attn = LoraConv1D(block.c_attn)
            block.attn_c_proj = LoraConv1D(block.attn_c_proj)
    times = []
    if variant == "forward":
        model.eval()
        with torch.no_grad():
            for step in range(steps + WARMUP):
                started = time.perf_counter()
                float(loss_of(model, data[step % 2]))
                times.append(time.perf_counter() - started)
    else:
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
        for step in range(steps + WARMUP):
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = loss_of(model, data[step % 2])
            loss.backward()
            if not math.isfinite(float(loss)):
                raise RuntimeError("non-finite loss")
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            times.append(time.perf_counter() - started)
    timed = sorted(times[WARMUP:])
    return timed[len(timed) // 2] * 1000


def blas_library():
    """The BLAS shared library this process has loaded (Linux), e.g. libopenblas.so.0."""
    try:
        with open("/proc/self/maps") as maps:
            names = {line.split()[-1] for line in maps if "blas" in line.lower() and "/" in line}
    except OSError:
        return "unknown"
    return ", ".join(sorted({name.rsplit("/", 1)[-1] for name in names if "lapack" not in name})) or "none"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--variants", default="forward,lora,full")
    args = parser.parse_args()
    # One thread is the anchor: on a 2-core machine two threads oversubscribe it.
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    # A discarded training pass first: until the process has run a backward pass, its steps stay
    # slow for longer than the warm-up (seen: a forward run first took 2-3x its time after one).
    run("lora", 2)
    rows = [{"variant": v, "stepMs": round(run(v, args.steps), 1)} for v in variants]
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "blas": blas_library(), "rows": rows}))


if __name__ == "__main__":
    main()
