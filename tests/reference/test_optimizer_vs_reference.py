#!/usr/bin/python3
"""Weights after `deepmoe train` steps against PyTorch float64 on the same batches: 3 steps of AdamW
(torch.optim.AdamW) and 3 of Lion (written here from its paper: update = sign(b1 m + (1-b1) g),
p -= lr (update + wd p), m = b2 m + (1-b2) g; sign(0) = 0). sign() turns f32-vs-f64 noise in a
near-zero blend into a 2·lr difference that later steps would amplify chaotically, so each Lion
step starts from deepmoe's own checkpoint of the step before (weights and first moment, --save-every
1) and is compared there, weights and moment; elements whose blend is ~0 are excluded from the
weight comparison. Both with global-norm clipping (torch.nn.utils.clip_grad_norm_), weight decay on
every trainable tensor, a cosine schedule with warmup, and the balance loss on. Every tensor must
match within 1e-4 relative. And `--schedule plateau`'s learning rates against
torch.optim.lr_scheduler.ReduceLROnPlateau fed the same validation losses (mode min, relative
threshold 1e-4, no cooldown). Prints 'N passed, M failed'."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import deepseek_ref as ref  # noqa: E402
from safetensors_io import ModelWeights, read_safetensors  # noqa: E402
from test_grads_vs_reference import BASE, SEQ, BATCH, report, run_cases, sequence_loss  # noqa: E402

CONFIG = dict(BASE, model_type="deepseek_v3", q_lora_rank=16, n_routed_experts=8, n_shared_experts=1,
              num_experts_per_tok=2, first_k_dense_replace=1, topk_method="noaux_tc", scoring_func="sigmoid",
              n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5)
STEPS, LR, MIN_LR, WARMUP, CLIP, WD, AUX = 3, 2e-2, 2e-3, 1, 0.5, 0.1, 0.01


def lr_at(step, steps):  # linear warmup, then cosine to MIN_LR over the remaining steps
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = min(1.0, (step - WARMUP) / max(1, steps - WARMUP))
    return MIN_LR + 0.5 * (LR - MIN_LR) * (1 + math.cos(math.pi * progress))


def check(optimizer, deepmoe, work):
    steps = STEPS
    d = os.path.join(work, optimizer)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(CONFIG, f)
    rng = np.random.default_rng(11)
    data = rng.integers(0, CONFIG["vocab_size"], size=SEQ * BATCH * steps + 1, dtype=np.uint32)
    data.tofile(os.path.join(d, "data.u32"))
    subprocess.run([deepmoe, "init", "--config", os.path.join(d, "config.json"), "--out", os.path.join(d, "model"),
                    "--seed", "4"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([deepmoe, "train", "--init", os.path.join(d, "model"), "--data", os.path.join(d, "data.u32"),
                    "--seq", str(SEQ), "--batch", str(BATCH), "--steps", str(steps), "--order", "sequential",
                    "--optimizer", optimizer, "--lr", str(LR), "--min-lr", str(MIN_LR), "--warmup", str(WARMUP),
                    "--schedule", "cosine", "--clip", str(CLIP), "--weight-decay", str(WD), "--aux-loss", str(AUX),
                    "--save-every", "1", "--keep-last", str(steps),
                    "--out", os.path.join(d, "trained")], check=True, stdout=subprocess.DEVNULL)
    ours = read_safetensors(os.path.join(d, "trained", "model.safetensors"))
    if optimizer == "lion":
        return check_lion_steps(d, data, steps)

    cfg = ref.Config(CONFIG)
    stored = ModelWeights(os.path.join(d, "model"))
    w = {n: stored[n].to(torch.float64).clone().requires_grad_(not n.endswith("e_score_correction_bias"))
         for n in stored.names()}
    trainable = [t for t in w.values() if t.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
    for step in range(steps):
        for t in trainable:
            t.grad = None
        batch_loss(w, cfg, data, step).backward()
        for t in trainable:  # unused experts get a zero gradient (and weight decay), as in deepmoe
            if t.grad is None:
                t.grad = torch.zeros_like(t)
        torch.nn.utils.clip_grad_norm_(trainable, CLIP)
        with torch.no_grad():
            for group in opt.param_groups:
                group["lr"] = lr_at(step, steps)
            opt.step()

    failures = []
    for n, t in w.items():
        error = (ours[n] - t.detach()).norm().item() / max(t.detach().norm().item(), 1e-30)
        if error > 1e-4:
            failures.append(f"{n}: relative error {error:.2e}")
    return report(optimizer, failures, f"{steps} steps, {len(w)} tensors")


def batch_loss(w, cfg, data, step):
    ce_total = balance_total = 0
    for b in range(BATCH):
        k = step * BATCH + b
        window = data[k * SEQ: k * SEQ + SEQ + 1].astype(np.int64)
        ce, balance = sequence_loss(window[:-1], window[1:], w, cfg)
        ce_total = ce_total + ce
        balance_total = balance_total + balance
    return ce_total / (BATCH * SEQ) + AUX * balance_total / BATCH


def check_lion_steps(d, data, steps):
    """Step k from deepmoe's checkpoint of step k (the initial model and zero moments for k = 0)
    against deepmoe's checkpoint of step k + 1."""
    cfg = ref.Config(CONFIG)
    failures = []
    skipped = total = 0
    for step in range(steps):
        start = os.path.join(d, "model") if step == 0 else os.path.join(d, "trained", "checkpoints", f"step-{step}")
        after = os.path.join(d, "trained", "checkpoints", f"step-{step + 1}")
        stored = ModelWeights(start)
        w = {n: stored[n].to(torch.float64).clone().requires_grad_(not n.endswith("e_score_correction_bias"))
             for n in stored.names()}
        moments_in = read_safetensors(os.path.join(start, "optimizer.safetensors")) if step else {}
        ours = read_safetensors(os.path.join(after, "model.safetensors"))
        ours_m = read_safetensors(os.path.join(after, "optimizer.safetensors"))
        batch_loss(w, cfg, data, step).backward()
        trainable = {n: t for n, t in w.items() if t.requires_grad}
        for t in trainable.values():
            if t.grad is None:
                t.grad = torch.zeros_like(t)
        torch.nn.utils.clip_grad_norm_(list(trainable.values()), CLIP)
        lr = lr_at(step, steps)
        with torch.no_grad():
            for n, t in trainable.items():
                m = moments_in[n + ".exp_avg"].to(torch.float64) if step else torch.zeros_like(t)
                blend = 0.9 * m + 0.1 * t.grad
                ambiguous = (blend.abs() <= 1e-3 * blend.abs().max()) & (blend != 0)
                t.mul_(1 - lr * WD).sub_(lr * torch.sign(blend))
                m = 0.99 * m + 0.01 * t.grad
                got = ours[n].clone()
                skipped += int(ambiguous.sum())
                total += ambiguous.numel()
                got[ambiguous] = t[ambiguous]
                for what, a, b in (("weights", got, t), ("moment", ours_m[n + ".exp_avg"], m)):
                    error = (a - b).norm().item() / max(b.norm().item(), 1e-30)
                    if error > 1e-4:
                        failures.append(f"step {step + 1}: {n} {what}: relative error {error:.2e}")
    if skipped > 0.03 * total:
        failures.append(f"{skipped} of {total} Lion updates had a near-zero blend (too many to skip)")
    return report("lion", failures, f"{steps} steps, each from deepmoe's checkpoint, {skipped} near-zero signs not compared")


def check_plateau(deepmoe, work, steps=14, lr=0.2, factor=0.5, patience=1, min_lr=0.02):
    d = os.path.join(work, "plateau")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(CONFIG, f)
    rng = np.random.default_rng(12)
    rng.integers(0, CONFIG["vocab_size"], size=SEQ * BATCH * 4 + 1, dtype=np.uint32).tofile(os.path.join(d, "data.u32"))
    rng.integers(0, CONFIG["vocab_size"], size=SEQ * BATCH + 1, dtype=np.uint32).tofile(os.path.join(d, "val.u32"))
    subprocess.run([deepmoe, "train", "--config", os.path.join(d, "config.json"), "--data", os.path.join(d, "data.u32"),
                    "--val-data", os.path.join(d, "val.u32"), "--eval-every", "1", "--seq", str(SEQ), "--batch",
                    str(BATCH), "--steps", str(steps), "--lr", str(lr), "--min-lr", str(min_lr), "--schedule", "plateau",
                    "--plateau-factor", str(factor), "--plateau-patience", str(patience), "--seed", "5",
                    "--out", os.path.join(d, "trained")], check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(d, "trained", "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f]
    parameter = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([parameter], lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience,
                                                           threshold=1e-4, threshold_mode="rel", min_lr=min_lr)
    failures, expected = [], []
    for m in metrics:
        expected.append(optimizer.param_groups[0]["lr"])
        scheduler.step(m["val_loss"])
    ours = [m["lr"] for m in metrics]
    if any(abs(a - b) > 1e-12 * b for a, b in zip(ours, expected)):
        failures.append(f"learning rates {ours} vs torch's {expected}")
    if len(set(expected)) < 2:
        failures.append("the validation loss never stalled, so nothing was checked (raise the learning rate)")
    return report("plateau", failures, f"{len(set(expected)) - 1} cuts in {steps} steps, lr {ours[0]} -> {ours[-1]}")


def main():
    run_cases(__doc__, [lambda d, w, o=o: check(o, d, w) for o in ("adamw", "lion")] + [check_plateau])


if __name__ == "__main__":
    main()
