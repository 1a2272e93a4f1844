#!/usr/bin/python3
"""`deepmoe logits` against the float64 PyTorch reference (deepseek_ref.py) on random checkpoints
covering every architecture variant we claim: each routing method, q_lora on and off,
v_head_dim != qk_nope_head_dim, YaRN over 150+ positions, tied embeddings, MTP tensors present,
F32 / BF16 / F16 / FP8 files, sharded checkpoints. Prints 'N passed, M failed'; exits non-zero on
any failure."""
import argparse
import json
import os
import random
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))

BASE = {
    "vocab_size": 211, "hidden_size": 96, "intermediate_size": 160, "moe_intermediate_size": 48,
    "num_hidden_layers": 3, "num_attention_heads": 4, "kv_lora_rank": 48, "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8, "v_head_dim": 16, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "max_position_embeddings": 4096,
}
YARN = {"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 32, "beta_fast": 32,
        "beta_slow": 1, "mscale": 0.707, "mscale_all_dim": 0.707}

# name -> (config overrides, init dtype, convert-to or None, shards, add MTP tensors)
VARIANTS = {
    "v3_noaux_tc_sigmoid_qlora_yarn": (dict(
        model_type="deepseek_v3", q_lora_rank=32, v_head_dim=24, n_routed_experts=16, n_shared_experts=1,
        num_experts_per_tok=2, first_k_dense_replace=1, topk_method="noaux_tc", scoring_func="sigmoid",
        n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5, rope_scaling=YARN),
        "f32", None, 1, False),
    "v3_noaux_tc_bf16_file_with_mtp": (dict(
        model_type="deepseek_v3", q_lora_rank=32, n_routed_experts=16, n_shared_experts=1,
        num_experts_per_tok=2, first_k_dense_replace=1, topk_method="noaux_tc", scoring_func="sigmoid",
        n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5, rope_scaling=YARN,
        num_nextn_predict_layers=1), "bf16", None, 1, True),
    "v3_fp8_block_scales_sharded": (dict(
        model_type="deepseek_v3", q_lora_rank=32, n_routed_experts=16, n_shared_experts=1,
        num_experts_per_tok=2, first_k_dense_replace=1, topk_method="noaux_tc", scoring_func="sigmoid",
        n_group=4, topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5, hidden_size=160,
        moe_intermediate_size=136), "f32", "fp8", 3, False),
    "v2_greedy_softmax_no_qlora_yarn_v2lite_like": (dict(
        model_type="deepseek_v2", q_lora_rank=None, n_routed_experts=16, n_shared_experts=2,
        num_experts_per_tok=3, first_k_dense_replace=1, topk_method="gready", scoring_func="softmax",
        n_group=1, topk_group=1, norm_topk_prob=False, routed_scaling_factor=1.0, rope_scaling=YARN),
        "f32", None, 1, False),
    "v2_group_limited_greedy_scaled": (dict(
        model_type="deepseek_v2", q_lora_rank=40, v_head_dim=12, n_routed_experts=16, n_shared_experts=1,
        num_experts_per_tok=3, first_k_dense_replace=0, topk_method="group_limited_greedy",
        scoring_func="softmax", n_group=4, topk_group=2, norm_topk_prob=False,
        routed_scaling_factor=16.0), "f32", None, 1, False),
    "v2_normalized_topk_f16_file_moe_every_other_layer": (dict(
        model_type="deepseek_v2", q_lora_rank=None, n_routed_experts=8, n_shared_experts=None,
        num_experts_per_tok=2, first_k_dense_replace=0, moe_layer_freq=2, topk_method="greedy",
        scoring_func="softmax", norm_topk_prob=True, routed_scaling_factor=3.0, num_hidden_layers=4),
        "f32", "f16", 1, False),
    "v3_greedy_sigmoid_tied_embeddings_dense_only_first": (dict(
        model_type="deepseek_v3", q_lora_rank=24, n_routed_experts=16, n_shared_experts=1,
        num_experts_per_tok=4, first_k_dense_replace=2, topk_method="greedy", scoring_func="sigmoid",
        n_group=1, topk_group=1, norm_topk_prob=False, routed_scaling_factor=2.0,
        tie_word_embeddings=True), "bf16", None, 1, False),
    "dense_only_no_experts": (dict(
        model_type="deepseek_v2", q_lora_rank=None, n_routed_experts=None, num_hidden_layers=2,
        rope_scaling=YARN), "f32", None, 1, False),
}

TOLERANCE = 1e-4  # f32 compute vs float64 reference, ‖a−b‖/‖b‖


def run(cmd):
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def check_variant(name, spec, deepmoe, work, n_tokens):
    overrides, dtype, convert, shards, mtp = spec
    config = dict(BASE)
    config.update(overrides)
    vdir = os.path.join(work, name)
    os.makedirs(vdir, exist_ok=True)
    config_path = os.path.join(vdir, "config.json")
    with open(config_path, "w") as f:
        json.dump(config, f, indent=1)
    model = os.path.join(vdir, "model")
    run([deepmoe, "init", "--config", config_path, "--out", model, "--seed", "7", "--dtype", dtype])
    if convert or shards > 1 or mtp:
        converted = os.path.join(vdir, "converted")
        cmd = [sys.executable, os.path.join(HERE, "convert_checkpoint.py"), "--in", model, "--out", converted,
               "--to", convert or dtype, "--shards", str(shards)]
        if mtp:
            cmd.append("--add-mtp")
        run(cmd)
        model = converted
    rng = random.Random(hash(name) & 0xffff)
    tokens = ",".join(str(rng.randrange(config["vocab_size"])) for _ in range(n_tokens))
    ours, ref = os.path.join(vdir, "ours.npy"), os.path.join(vdir, "ref.npy")
    result = run([deepmoe, "logits", "--model", model, "--tokens", tokens, "--out", ours])
    if mtp and "warning" in result.stderr:
        raise RuntimeError(f"MTP tensors should load silently, got: {result.stderr.strip()}")
    run([sys.executable, os.path.join(HERE, "deepseek_ref.py"), "--model", model, "--tokens", tokens, "--out", ref])
    a, b = np.load(ours).astype(np.float64), np.load(ref).astype(np.float64)
    if a.shape != b.shape:
        raise RuntimeError(f"shape {a.shape} vs reference {b.shape}")
    if np.std(b) < 1e-3:
        raise RuntimeError("reference logits are nearly constant: the test would prove nothing")
    error = np.linalg.norm(a - b) / np.linalg.norm(b)
    worst_row = max(np.linalg.norm(a[i] - b[i]) / np.linalg.norm(b[i]) for i in range(len(b)))
    if mtp:  # the MTP module as speculative decoding drafts with it, against the reference's
        run([deepmoe, "logits", "--model", model, "--tokens", tokens, "--out", ours, "--mtp"])
        run([sys.executable, os.path.join(HERE, "deepseek_ref.py"), "--model", model, "--tokens", tokens, "--out", ref,
             "--mtp"])
        a, b = np.load(ours).astype(np.float64), np.load(ref).astype(np.float64)
        if a.shape != b.shape or np.std(b) < 1e-3:
            raise RuntimeError(f"MTP logits: shape {a.shape} vs reference {b.shape}, reference std {np.std(b)}")
        error = max(error, np.linalg.norm(a - b) / np.linalg.norm(b))
        worst_row = max(worst_row, *(np.linalg.norm(a[i] - b[i]) / np.linalg.norm(b[i]) for i in range(len(b))))
    return error, worst_row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--deepmoe", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--tokens", type=int, default=160, help="prompt length (YaRN needs > 32 here)")
    args = parser.parse_args()
    os.makedirs(args.work, exist_ok=True)
    passed = failed = 0
    for name, spec in VARIANTS.items():
        start = time.time()
        try:
            error, worst_row = check_variant(name, spec, args.deepmoe, args.work, args.tokens)
            ok = error <= TOLERANCE and worst_row <= TOLERANCE
            print(f"{'PASS' if ok else 'FAIL'} {name}: relative error {error:.2e} (worst position {worst_row:.2e}, "
                  f"tolerance {TOLERANCE:g}) [{time.time() - start:.1f}s]")
        except Exception as e:  # report and go on: one broken variant should not hide the others
            ok = False
            print(f"FAIL {name}: {e}")
        passed += ok
        failed += not ok
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
