#!/usr/bin/python3
"""Rewrite a HF DeepSeek checkpoint in another storage dtype, optionally sharded and with fake
multi-token-prediction (MTP) tensors, so loaders can be tested on every layout DeepSeek ships.

  convert_checkpoint.py --in DIR --out DIR --to {f32,bf16,f16,fp8} [--shards N] [--add-mtp] [--seed S]

--to fp8 mimics DeepSeek-V3's release: linear projection weights (`*_proj.weight`, 2-D) become
F8_E4M3 with a float32 `*_proj.weight_scale_inv` per 128x128 block; every other floating tensor
(norms, embeddings, lm_head, router gate, e_score_correction_bias) is stored BF16.
Integer tensors are copied unchanged. Input may be any dtype the reader understands, including
fp8 (it is dequantized first; the old scale tensors are dropped)."""
import argparse
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io as sio  # noqa: E402

TARGET_DTYPE = {"f32": "F32", "bf16": "BF16", "f16": "F16", "fp8": "F8_E4M3"}
WEIGHT_FILES = ("model.safetensors.index.json",)


def is_fp8_candidate(name, array):
    """Only linear projections are block-quantized in DeepSeek-V3's FP8 release."""
    return name.endswith(".weight") and "_proj." in name and array.ndim == 2


def load_all(in_dir):
    """name -> (float64/int64 numpy array, is_integer), dequantizing fp8, dropping scale tensors."""
    weights = sio.ModelWeights(in_dir)
    out = {}
    for name in weights.names():
        if name.endswith("_scale_inv"):
            continue
        value = weights[name].numpy()
        out[name] = (value, value.dtype.kind in "iu")
    return out


def mtp_tensors(config, tensors, rng):
    """MTP modules at layer indices num_hidden_layers + d, laid out as DeepSeek-V3 ships its
    next-token-prediction layer: enorm, hnorm, eh_proj [h, 2h], shared_head.norm, a full decoder
    block (here the last main layer's tensors, perturbed) and copies of the embedding and head,
    which loaders skip. Logit tests check the main model is unchanged by them."""
    h = config["hidden_size"]
    first = config["num_hidden_layers"]
    count = max(1, int(config.get("num_nextn_predict_layers", 1) or 1))
    last = f"model.layers.{first - 1}."
    embed = tensors["model.embed_tokens.weight"][0]
    out = {}
    for layer in range(first, first + count):
        p = f"model.layers.{layer}."
        for name, (value, is_int) in tensors.items():
            if name.startswith(last) and not is_int:
                noise = rng.standard_normal(value.shape).astype(value.dtype) * 0.01
                out[p + name[len(last):]] = (value + noise, False)
        for suffix in ("enorm.weight", "hnorm.weight", "shared_head.norm.weight"):
            out[p + suffix] = (1.0 + 0.1 * rng.standard_normal(h).astype(embed.dtype), False)
        out[p + "eh_proj.weight"] = (rng.standard_normal((h, 2 * h)).astype(embed.dtype) / np.sqrt(2 * h), False)
        out[p + "embed_tokens.weight"] = (embed.copy(), False)
        out[p + "shared_head.head.weight"] = (tensors.get("lm_head.weight", (embed,))[0].copy(), False)
    return out


def encode(tensors, to):
    """name -> (array, dtype string) ready for the writer, in the target storage."""
    out = {}
    for name, (value, is_int) in tensors.items():
        if is_int:
            out[name] = (value, "I64")
        elif to == "fp8":
            if is_fp8_candidate(name, value):
                codes, scale_inv = sio.quantize_blocks(value)
                out[name] = (codes, "F8_E4M3")
                out[name + "_scale_inv"] = (scale_inv, "F32")
            else:
                out[name] = (value, "BF16")
        else:
            out[name] = (value, TARGET_DTYPE[to])
    return out


def nbytes(array, dtype):
    return array.size * {"F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "I64": 8}[dtype]


def split_shards(encoded, n):
    """Contiguous runs of tensors (in name order) with roughly equal byte counts. A weight and its
    scale tensor may land in different shards: real checkpoints do that too."""
    names = sorted(encoded)
    if n > len(names):
        raise SystemExit(f"--shards {n} exceeds the number of tensors ({len(names)})")
    total = sum(nbytes(*encoded[k]) for k in names)
    shards, current, acc = [], [], 0
    for i, name in enumerate(names):
        current.append(name)
        acc += nbytes(*encoded[name])
        remaining_names = len(names) - i - 1
        remaining_shards = n - len(shards) - 1
        # close the shard at its byte quota, or when the rest only just fills the rest of the shards
        if remaining_shards > 0 and (acc >= total * (len(shards) + 1) / n or remaining_names == remaining_shards):
            shards.append(current)
            current = []
    shards.append(current)
    assert len(shards) == n and all(shards)
    return shards


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--in", dest="in_dir", required=True)
    parser.add_argument("--out", dest="out_dir", required=True)
    parser.add_argument("--to", choices=sorted(TARGET_DTYPE), required=True)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--add-mtp", action="store_true", help="append MTP modules (num_nextn_predict_layers of them)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the fake MTP tensors")
    args = parser.parse_args()
    if args.shards < 1:
        raise SystemExit("--shards must be >= 1")
    if os.path.abspath(args.in_dir) == os.path.abspath(args.out_dir):
        raise SystemExit("--in and --out must differ")
    os.makedirs(args.out_dir, exist_ok=True)

    # config, tokenizer and any other side files travel unchanged
    for entry in os.listdir(args.in_dir):
        src = os.path.join(args.in_dir, entry)
        if os.path.isfile(src) and not entry.endswith(".safetensors") and entry not in WEIGHT_FILES:
            shutil.copy2(src, os.path.join(args.out_dir, entry))
    # stale weights from an earlier run into the same --out would confuse the loaders
    for entry in os.listdir(args.out_dir):
        if entry.endswith(".safetensors") or entry in WEIGHT_FILES:
            os.remove(os.path.join(args.out_dir, entry))

    with open(os.path.join(args.in_dir, "config.json")) as f:
        config = json.load(f)
    tensors = load_all(args.in_dir)
    if args.add_mtp:
        tensors.update(mtp_tensors(config, tensors, np.random.default_rng(args.seed)))
    encoded = encode(tensors, args.to)

    metadata = {"format": "pt"}
    if args.shards == 1:
        sio.write_safetensors(os.path.join(args.out_dir, "model.safetensors"),
                              {k: encoded[k] for k in sorted(encoded)}, metadata)
        return
    weight_map = {}
    groups = split_shards(encoded, args.shards)
    for i, group in enumerate(groups, start=1):
        fname = f"model-{i:05d}-of-{args.shards:05d}.safetensors"
        sio.write_safetensors(os.path.join(args.out_dir, fname), {k: encoded[k] for k in group}, metadata)
        weight_map.update({k: fname for k in group})
    index = {"metadata": {"total_size": sum(nbytes(*v) for v in encoded.values())},
             "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(args.out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)


if __name__ == "__main__":
    main()
