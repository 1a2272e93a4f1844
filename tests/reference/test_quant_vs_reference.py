"""`deepmoe quantize` against a float64 PyTorch quantizer written from docs/quantization.md: for w8,
w4 (groups of 32/64/128, symmetric and asymmetric) and w8a8, on a random model, every quantized
matrix's scales, zero points and codes (nibble order included) equal the reference's (codes may
differ by one step on at most 0.1% of values, where f32 and f64 round a near-tie apart), the kept
tensors (embeddings, norms, router, bias, kv_b_proj) are byte-identical, and dequantized weights
stay within half a step of the originals.
"""
import json
import os
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from safetensors_io import SafetensorsFile  # noqa: E402
from test_grads_vs_reference import report, run_cases  # noqa: E402

CONFIG = {"model_type": "deepseek_v3", "vocab_size": 256, "hidden_size": 128, "intermediate_size": 192,
          "moe_intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "q_lora_rank": 64,
          "kv_lora_rank": 64, "qk_nope_head_dim": 32, "qk_rope_head_dim": 16, "v_head_dim": 32,
          "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2, "first_k_dense_replace": 1,
          "topk_method": "noaux_tc", "scoring_func": "sigmoid", "n_group": 2, "topk_group": 1}
KEPT_SUFFIXES = ("embed_tokens.weight", "mlp.gate.weight", "kv_b_proj.weight")


def f16(values):
    return torch.as_tensor(values, dtype=torch.float64).to(torch.float16).to(torch.float64)


def reference_int8(w):
    """Per output channel: scale = max|x| / 127 (f32), q = round(x / scale)."""
    scale = (w.abs().amax(dim=1) / 127).to(torch.float32).to(torch.float64)
    q = torch.where(scale[:, None] > 0, torch.round(w / scale[:, None]), torch.zeros_like(w)).clamp(-127, 127)
    return q, scale


def reference_int4(w, group, asymmetric):
    """Per group: symmetric scale = max|x| / 7, q = round(x / s) + 8; asymmetric scale = (max - min) / 15
    over a range that includes 0, zero = round(-min / s), q = round(x / s) + zero; q clamped to [0, 15]."""
    rows, cols = w.shape
    g = w.reshape(rows, cols // group, group)
    lo, hi = g.amin(dim=2).clamp(max=0), g.amax(dim=2).clamp(min=0)
    scale = f16(g.abs().amax(dim=2) / 7) if not asymmetric else f16((hi - lo) / 15)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.full_like(scale, 8.0) if not asymmetric else torch.where(scale > 0, torch.round(-lo / safe), 0 * lo).clamp(0, 15)
    q = torch.where(scale[..., None] > 0, torch.round(g / safe[..., None]), 0 * g) + zero[..., None]
    return q.clamp(0, 15).reshape(rows, cols), scale, zero


def unpack_nibbles(packed, cols):
    """[rows, cols/2] bytes, 32-value chunks of 16 bytes: byte j holds value j (low) and j + 16 (high)."""
    p = torch.as_tensor(packed.astype(np.int64)).reshape(packed.shape[0], cols // 32, 16)
    return torch.cat([p & 0xF, p >> 4], dim=2).reshape(packed.shape[0], cols).to(torch.float64)


def code_mismatch(q, expected):
    diff = (q - expected).abs()
    return float(diff.max()), float((diff > 0).double().mean())


def check(deepmoe, work, qtype, extra=()):
    def case():
        os.makedirs(work, exist_ok=True)
        model = os.path.join(work, "model")
        if not os.path.exists(os.path.join(model, "model.safetensors")):
            with open(os.path.join(work, "config.json"), "w") as f:
                json.dump(CONFIG, f)
            subprocess.run([deepmoe, "init", "--config", os.path.join(work, "config.json"), "--out", model, "--seed", "3"],
                           check=True, capture_output=True)
        out = os.path.join(work, qtype)
        subprocess.run([deepmoe, "quantize", "--model", model, "--type", qtype, "--out", out, *extra], check=True,
                       capture_output=True)
        src, dst = SafetensorsFile(os.path.join(model, "model.safetensors")), SafetensorsFile(os.path.join(out, "model.safetensors"))
        config = json.load(open(os.path.join(out, "config.json")))["quantization_config"]
        failures, matrices, worst_step = [], 0, 0.0
        for name in src.names():
            w = torch.as_tensor(src.get(name))
            group = int(qtype[3:].split("_")[0]) if qtype.startswith("w4") else 1
            # Kept: the rule's tensors, vectors, and matrices whose rows are not whole groups.
            matrix = (w.dim() == 2 and name.endswith(".weight") and not name.endswith(KEPT_SUFFIXES) and
                      w.shape[1] % group == 0)
            if not matrix:
                if src.raw(name).tobytes() != dst.raw(name).tobytes() or dst.dtype(name) != src.dtype(name):
                    failures.append(f"{name}: kept tensor changed")
                continue
            matrices += 1
            stem = name[: -len(".weight")]
            if qtype in ("w8", "w8a8"):
                q, scale = reference_int8(w)
                got_q, got_scale = torch.as_tensor(dst.get(name)).double(), torch.as_tensor(dst.get(stem + ".weight_scale"))
                deq, step = got_q * got_scale[:, None], got_scale[:, None]
            else:
                asym = qtype.endswith("_asym")
                q, scale, zero = reference_int4(w, group, asym)
                got_q = unpack_nibbles(dst.raw(name), w.shape[1])
                got_scale = torch.as_tensor(dst.get(stem + ".weight_scale"))
                got_zero = torch.as_tensor(dst.get(stem + ".weight_zero_point")).double() if asym else torch.full_like(scale, 8.0)
                if (got_zero != zero).any():
                    failures.append(f"{name}: zero points differ in {int((got_zero != zero).sum())} groups")
                expand = lambda t: t.repeat_interleave(group, dim=1)  # noqa: E731
                deq, step = (got_q - expand(got_zero)) * expand(got_scale), expand(got_scale)
            if not torch.equal(got_scale, scale):
                failures.append(f"{name}: scales differ (max {float((got_scale - scale).abs().max()):.3g})")
            largest, fraction = code_mismatch(got_q, q)
            if largest > 1 or fraction > 1e-3:
                failures.append(f"{name}: codes differ by up to {largest} on {fraction:.2%}")
            worst_step = max(worst_step, float(((deq - w).abs() / step.clamp(min=1e-30)).max()))
        if worst_step > 0.5 + 1e-3 and qtype.startswith("w8"):
            failures.append(f"dequantized weights off by {worst_step:.3f} steps")
        if config["format"] != qtype:
            failures.append(f"quantization_config.format is {config['format']}")
        return report(f"quantize {qtype}", failures, f"{matrices} matrices, dequantized within {worst_step:.3f} steps")
    return case


if __name__ == "__main__":
    args = sys.argv
    deepmoe = args[args.index("--deepmoe") + 1]
    work = args[args.index("--work") + 1]
    run_cases(__doc__, [lambda d, w, t=t, e=e: check(d, w, t, e)() for t, e in
                        [("w8", ()), ("w8a8", ("--activations", "dynamic")), ("w4g32", ()), ("w4g64_asym", ()),
                         ("w4g128", ()), ("w4g128_asym", ())]])
