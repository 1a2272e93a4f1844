#!/usr/bin/python3
"""The peer for `deepmoe train`: the same model trained the ordinary PyTorch way (Debian's torch,
f32, HF-style loop over experts, AdamW), on the same token file, batch, sequence length and thread
count. Uses the forward pass of tests/reference/deepseek_ref.py. Prints one JSON line with the
median tokens/s over the timed steps.

  train_peer_torch.py --model DIR --data F.u32 --seq T --batch B --steps S --threads N"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import deepseek_ref as ref  # noqa: E402
from safetensors_io import ModelWeights  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("--model", "--data"):
        parser.add_argument(name, required=True)
    for name, default in (("--seq", 128), ("--batch", 8), ("--steps", 6), ("--threads", 2)):
        parser.add_argument(name, type=int, default=default)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ref.Config.load(args.model)
    stored = ModelWeights(args.model)
    w = {n: stored[n].to(torch.float32).clone().requires_grad_(not n.endswith("bias")) for n in stored.names()}
    opt = torch.optim.AdamW([t for t in w.values() if t.requires_grad], lr=1e-3)
    data = np.fromfile(args.data, dtype=np.uint32).astype(np.int64)
    cos, sin = (t.to(torch.float32) for t in ref.rope_tables(cfg, args.seq))
    eps = cfg.rms_norm_eps
    times = []
    for step in range(args.steps):
        start = time.perf_counter()
        opt.zero_grad()
        loss = 0
        for b in range(args.batch):
            k = step * args.batch + b
            window = torch.from_numpy(data[k * args.seq: k * args.seq + args.seq + 1])
            x = w["model.embed_tokens.weight"][window[:-1]]
            for layer in range(cfg.num_hidden_layers):
                p = f"model.layers.{layer}."
                h = x + ref.mla_attention(ref.rms_norm(x, w[p + "input_layernorm.weight"], eps), w, p + "self_attn.",
                                          cfg, cos, sin)
                normed = ref.rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
                out = ref.moe(normed, w, p + "mlp.", cfg) if ref.is_moe_layer(cfg, layer) else ref.gated_mlp(normed, w, p + "mlp.")
                x = h + out
            x = ref.rms_norm(x, w["model.norm.weight"], eps)
            head = w["model.embed_tokens.weight"] if cfg.tie_word_embeddings else w["lm_head.weight"]
            loss = loss + torch.nn.functional.cross_entropy(ref.linear(x, head), window[1:]) / args.batch
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    timed = times[1:] if len(times) > 1 else times  # the first step warms up
    print(json.dumps({"engine": "pytorch", "torch": torch.__version__, "threads": args.threads,
                      "tokens_per_second": args.batch * args.seq / statistics.median(timed), "loss": float(loss)}))


if __name__ == "__main__":
    main()
