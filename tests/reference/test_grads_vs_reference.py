#!/usr/bin/python3
"""`deepmoe train --dump-grads` against PyTorch float64 autograd (Debian python3-torch) on the same
weights and batch: the loss is the mean token cross-entropy plus A x the DeepSeek-V3 sequence-wise
balance loss (per MoE layer and sequence: sum_i f_i P_i, f_i = E/(K T) x selections of i, a constant;
P_i the mean over tokens of expert i's score normalized over all experts; summed over layers,
averaged over sequences), written here from those formulas with the forward pass of deepseek_ref.py.
Every parameter's gradient must match within 1e-4 relative (norm of the difference over the norm of
the reference), for each routing variant, with and without q_lora, tied and untied. Prints
'N passed, M failed'."""
import argparse
import json
import os
import subprocess
import zlib
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import deepseek_ref as ref  # noqa: E402
from safetensors_io import ModelWeights, read_safetensors  # noqa: E402

BASE = {
    "vocab_size": 97, "hidden_size": 48, "intermediate_size": 80, "moe_intermediate_size": 24,
    "num_hidden_layers": 3, "num_attention_heads": 4, "kv_lora_rank": 24, "qk_nope_head_dim": 8,
    "qk_rope_head_dim": 8, "v_head_dim": 12, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "max_position_embeddings": 4096,
}
YARN = {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 8, "beta_fast": 32,
        "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}
VARIANTS = {
    "v3_noaux_tc_sigmoid_qlora_yarn_aux": (dict(
        model_type="deepseek_v3", q_lora_rank=16, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
        first_k_dense_replace=1, topk_method="noaux_tc", scoring_func="sigmoid", n_group=4, topk_group=2,
        norm_topk_prob=True, routed_scaling_factor=2.5, rope_scaling=YARN), 0.01),
    "v2_greedy_softmax_no_qlora_aux": (dict(
        model_type="deepseek_v2", q_lora_rank=None, n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=3,
        first_k_dense_replace=1, topk_method="greedy", scoring_func="softmax", n_group=1, topk_group=1,
        norm_topk_prob=False, routed_scaling_factor=1.5), 0.05),
    "v2_group_limited_normalized_tied": (dict(
        model_type="deepseek_v2", q_lora_rank=16, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
        first_k_dense_replace=1, topk_method="group_limited_greedy", scoring_func="softmax", n_group=4,
        topk_group=2, norm_topk_prob=True, routed_scaling_factor=1.0, tie_word_embeddings=True), 0.0),
    "v3_greedy_sigmoid_unnormalized": (dict(
        model_type="deepseek_v3", q_lora_rank=None, n_routed_experts=8, n_shared_experts=0, num_experts_per_tok=2,
        first_k_dense_replace=0, topk_method="greedy", scoring_func="sigmoid", n_group=1, topk_group=1,
        norm_topk_prob=False, routed_scaling_factor=2.0), 0.02),
}
SEQ, BATCH = 12, 3


def scores_of(x, w, prefix, cfg):
    logits = ref.linear(x, w[prefix + "gate.weight"])
    return torch.softmax(logits, dim=-1) if cfg.scoring_func == "softmax" else torch.sigmoid(logits)


def sequence_loss(tokens, targets, w, cfg):
    """(cross-entropy sum over positions, balance loss of this sequence summed over MoE layers)."""
    logprobs, balance = sequence_terms(tokens, targets, w, cfg)
    return -logprobs.sum(), balance


def decoder_layer(x, w, layer, cfg):
    """One pre-norm decoder layer over the positions 0.. of x: (its output, its balance loss term)."""
    T = len(x)
    cos, sin = ref.rope_tables(cfg, T)
    eps = cfg.rms_norm_eps
    p = f"model.layers.{layer}."
    h = x + ref.mla_attention(ref.rms_norm(x, w[p + "input_layernorm.weight"], eps), w, p + "self_attn.", cfg, cos, sin)
    normed = ref.rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
    if not ref.is_moe_layer(cfg, layer):
        return h + ref.gated_mlp(normed, w, p + "mlp."), torch.zeros((), dtype=torch.float64)
    out = ref.moe(normed, w, p + "mlp.", cfg)
    idx, _ = ref.route(normed, w, p + "mlp.", cfg)
    s = scores_of(normed, w, p + "mlp.", cfg)
    probs = s if cfg.scoring_func == "softmax" else s / s.sum(dim=-1, keepdim=True)
    E, K = cfg.n_routed_experts, cfg.num_experts_per_tok
    counts = torch.bincount(idx.reshape(-1), minlength=E).to(torch.float64)
    f = E / (K * T) * counts  # constant
    return h + out, (f * probs.mean(dim=0)).sum()


def target_logprobs(x, targets, w, cfg):
    head = w["model.embed_tokens.weight"] if cfg.tie_word_embeddings else w["lm_head.weight"]
    logits = ref.linear(x, head)
    return torch.log_softmax(logits, dim=-1).gather(1, torch.as_tensor(targets).reshape(-1, 1)).reshape(-1)


def sequence_terms(tokens, targets, w, cfg):
    """(log p(target) at each position, balance loss of this sequence summed over MoE layers)."""
    logprobs, balance, _ = sequence_terms_with_mtp(tokens, targets, w, cfg, 0)
    return logprobs, balance


def sequence_terms_with_mtp(tokens, targets, w, cfg, mtp_depth):
    """(log p(target) at each position, balance loss of this sequence summed over MoE layers, and
    for each MTP depth k its log p(t_{i+k+1}) at positions i < T - k)."""
    eps = cfg.rms_norm_eps
    x = w["model.embed_tokens.weight"][torch.as_tensor(tokens)]
    balance = torch.zeros((), dtype=torch.float64)
    for layer in range(cfg.num_hidden_layers):
        x, term = decoder_layer(x, w, layer, cfg)
        balance = balance + term
    x = ref.rms_norm(x, w["model.norm.weight"], eps)
    logprobs = target_logprobs(x, targets, w, cfg)
    # DeepSeek-V3 §2.2 as released code runs it: depth k at position i joins enorm(Emb(t_{i+k}))
    # (embedding first) with hnorm of the previous depth's state (the main model's normed output,
    # then each module's after its shared_head.norm), runs its decoder layer num_hidden_layers + k - 1
    # over positions 0..T-k-1, and predicts t_{i+k+1} through shared_head.norm and the shared head.
    mtp = []
    T = len(tokens)
    for k in range(1, mtp_depth + 1):
        layer = cfg.num_hidden_layers + k - 1
        p = f"model.layers.{layer}."
        n = T - k
        nxt = torch.as_tensor(targets[k - 1: k - 1 + n])
        e = ref.rms_norm(w["model.embed_tokens.weight"][nxt], w[p + "enorm.weight"], eps)
        hh = ref.rms_norm(x[:n], w[p + "hnorm.weight"], eps)
        y, term = decoder_layer(ref.linear(torch.cat([e, hh], dim=-1), w[p + "eh_proj.weight"]), w, layer, cfg)
        balance = balance + term
        x = ref.rms_norm(y, w[p + "shared_head.norm.weight"], eps)
        mtp.append(target_logprobs(x, targets[k: k + n], w, cfg))
    return logprobs, balance, mtp


def check(name, overrides, aux, deepmoe, work, extra_args=(), tolerance=1e-4, mtp=(0, 0.0)):
    """mtp: (depth D, weight λ): the model carries D MTP modules and the loss adds
    λ/D Σ_k mean CE of depth k (DeepSeek-V3 eq. 25)."""
    mtp_depth, mtp_weight = mtp
    if mtp_depth:
        overrides = dict(overrides, num_nextn_predict_layers=mtp_depth)
        extra_args = [*extra_args, "--mtp-depth", str(mtp_depth), "--mtp-weight", str(mtp_weight)]
    d = os.path.join(work, name)
    os.makedirs(d, exist_ok=True)
    cfg_raw = dict(BASE, **overrides)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg_raw, f)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    data = rng.integers(0, cfg_raw["vocab_size"], size=SEQ * BATCH + 1 + 5, dtype=np.uint32)
    data.tofile(os.path.join(d, "data.u32"))
    subprocess.run([deepmoe, "init", "--config", os.path.join(d, "config.json"), "--out", os.path.join(d, "model"),
                    "--seed", "3"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([deepmoe, "train", "--init", os.path.join(d, "model"), "--data", os.path.join(d, "data.u32"),
                    "--seq", str(SEQ), "--batch", str(BATCH), "--steps", "1", "--order", "sequential",
                    "--aux-loss", str(aux), "--lr", "1e-3", "--dump-grads", os.path.join(d, "grads"),
                    "--out", os.path.join(d, "trained"), *extra_args], check=True, stdout=subprocess.DEVNULL)
    ours = read_safetensors(os.path.join(d, "grads", "model.safetensors"))
    with open(os.path.join(d, "trained", "metrics.jsonl")) as f:
        our_loss = json.loads(f.readline())["loss"]

    cfg = ref.Config(cfg_raw)
    stored = ModelWeights(os.path.join(d, "model"))
    w = {n: stored[n].to(torch.float64).clone().requires_grad_(True) for n in stored.names()}
    ce_total = torch.zeros((), dtype=torch.float64)
    balance_total = torch.zeros((), dtype=torch.float64)
    mtp_totals = [torch.zeros((), dtype=torch.float64) for _ in range(mtp_depth)]
    for b in range(BATCH):
        window = data[b * SEQ: b * SEQ + SEQ + 1].astype(np.int64)
        logprobs, balance, mtp_logprobs = sequence_terms_with_mtp(window[:-1], window[1:], w, cfg, mtp_depth)
        ce_total = ce_total - logprobs.sum()
        balance_total = balance_total + balance
        for k, lp in enumerate(mtp_logprobs):
            mtp_totals[k] = mtp_totals[k] - lp.sum()
    loss = ce_total / (BATCH * SEQ) + aux * balance_total / BATCH
    for k, total in enumerate(mtp_totals, start=1):
        loss = loss + mtp_weight / mtp_depth * total / (BATCH * (SEQ - k))
    loss.backward()

    failures = []
    worst = 0.0
    if abs(loss.item() - our_loss) > tolerance * abs(loss.item()):
        failures.append(f"loss {our_loss} vs reference {loss.item()}")
    for n, leaf in w.items():
        if n.endswith("e_score_correction_bias"):
            if n in ours and ours[n].abs().max() != 0:
                failures.append(f"{n}: the selection bias got a gradient")
            continue
        expected = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        if n not in ours:
            failures.append(f"{n}: no gradient written")
            continue
        got = ours[n]
        scale = expected.norm().item()
        diff = (got - expected).norm().item()
        if scale != 0:
            worst = max(worst, diff / scale)
        if scale == 0:
            if got.abs().max().item() != 0:
                failures.append(f"{n}: reference gradient is zero, ours is not")
        elif diff / scale > tolerance:
            failures.append(f"{n}: relative error {diff / scale:.2e}")
    return report(name, failures, f"loss {our_loss:.6f}, {len(w)} tensors, worst relative error {worst:.1e}")


def report(name, failures, summary):
    """Prints PASS or FAIL with the first failures; True when there are none."""
    if failures:
        print(f"FAIL {name}")
        for line in failures[:12]:
            print("   ", line)
        return False
    print(f"PASS {name} ({summary})")
    return True


def run_cases(description, cases):
    """Command line --deepmoe / --work; runs each case(deepmoe, work) and exits non-zero on failure."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--deepmoe", required=True)
    parser.add_argument("--work", required=True)
    args = parser.parse_args()
    results = [case(args.deepmoe, args.work) for case in cases]
    print(f"{sum(results)} passed, {len(results) - sum(results)} failed")
    sys.exit(0 if all(results) else 1)


# Recomputation must not change a bit of the math; bf16 operands (f32 accumulation) are held to
# bf16's precision: 8 significant bits give ~2e-3 per operand; through the ~20 products of a
# backward pass the deepest gradients land at 1-2e-2 (measured), hence 5e-2.
EXTRA_CASES = {
    "v3_noaux_tc_sigmoid_qlora_yarn_aux_recompute": ("v3_noaux_tc_sigmoid_qlora_yarn_aux", ["--recompute"], 1e-4),
    "v3_noaux_tc_sigmoid_qlora_yarn_aux_bf16": ("v3_noaux_tc_sigmoid_qlora_yarn_aux", ["--precision", "bf16"], 5e-2),
    "v2_greedy_softmax_no_qlora_aux_bf16": ("v2_greedy_softmax_no_qlora_aux", ["--precision", "bf16"], 5e-2),
}
# Multi-token prediction (--mtp-depth D --mtp-weight λ): an MoE MTP layer chained over two depths
# (the second reads the first's output), and a dense one on a tied head.
MTP_CASES = {
    "v3_noaux_tc_sigmoid_qlora_yarn_aux_mtp2": ("v3_noaux_tc_sigmoid_qlora_yarn_aux", (2, 0.3)),
    "v2_group_limited_normalized_tied_mtp1_dense": ("v2_group_limited_normalized_tied", (1, 0.5)),
}


# A bf16 run routes each token by bf16-rounded activations: where two experts' scores are close, it
# may pick another expert than the float64 reference, and that token's gradient changes entirely
# (measured: a group-limited V3 config flips on some data and not on others, whatever the engine
# version). So each bf16 case runs on three data seeds and passes when at least two of them match;
# a wrong bf16 path fails all three.
BF16_SEEDS = ("", "#2", "#3")


def check_on_seeds(name, overrides, aux, deepmoe, work, extra, tolerance):
    passed = sum(check(name + seed, overrides, aux, deepmoe, work, extra, tolerance) for seed in BF16_SEEDS)
    print(f"{'PASS' if passed >= 2 else 'FAIL'} {name}: {passed} of {len(BF16_SEEDS)} data seeds within {tolerance}")
    return passed >= 2


def main():
    cases = [lambda d, w, n=n, o=o, a=a: check(n, o, a, d, w) for n, (o, a) in VARIANTS.items()]
    for name, (base, extra, tolerance) in EXTRA_CASES.items():
        overrides, aux = VARIANTS[base]
        run = check_on_seeds if "--precision" in extra else check
        cases.append(lambda d, w, n=name, o=overrides, a=aux, e=extra, t=tolerance, r=run: r(n, o, a, d, w, e, t))
    for name, (base, mtp) in MTP_CASES.items():
        overrides, aux = VARIANTS[base]
        if name.endswith("_dense"):  # first_k_dense_replace past every layer: the MTP block dense too
            overrides = dict(overrides, first_k_dense_replace=4)
        cases.append(lambda d, w, n=name, o=overrides, a=aux, m=mtp: check(n, o, a, d, w, mtp=m))
    run_cases(__doc__, cases)


if __name__ == "__main__":
    main()
