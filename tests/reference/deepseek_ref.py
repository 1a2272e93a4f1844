#!/usr/bin/python3
"""Float64 reference forward pass of DeepSeek-V2 / V3 (MLA attention + DeepSeekMoE), written from
the published formulas (HF modeling_deepseek_v2/v3.py, DeepSeek's inference/model.py) for checking
deepmoe's logits. Deliberately simple: no KV cache, no weight absorption, one causal pass.

  deepseek_ref.py --model DIR --tokens 1,2,3 --out logits.npy

writes float32 logits [n_tokens, vocab_size] for every position. Python API:
forward(model_dir, tokens) -> float64 torch tensor [n_tokens, vocab_size]."""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import ModelWeights  # noqa: E402

# Defaults of DeepSeek's own config classes (configuration_deepseek.py), used only when a field
# is absent from config.json; an explicit null stays None (e.g. q_lora_rank: null = no q LoRA).
DEFAULTS = {
    "deepseek_v3": dict(
        vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=61, num_attention_heads=128, n_shared_experts=1, n_routed_experts=256,
        routed_scaling_factor=2.5, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64,
        v_head_dim=128, qk_nope_head_dim=128, topk_method="noaux_tc", n_group=8, topk_group=4,
        num_experts_per_tok=8, moe_layer_freq=1, first_k_dense_replace=3, norm_topk_prob=True,
        scoring_func="sigmoid", rms_norm_eps=1e-6, rope_theta=10000.0, rope_scaling=None,
        tie_word_embeddings=False),
    "deepseek_v2": dict(
        vocab_size=102400, hidden_size=4096, intermediate_size=11008, moe_intermediate_size=1407,
        num_hidden_layers=30, num_attention_heads=32, n_shared_experts=None, n_routed_experts=None,
        routed_scaling_factor=1.0, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64,
        v_head_dim=128, qk_nope_head_dim=128, topk_method="gready", n_group=None, topk_group=None,
        num_experts_per_tok=None, moe_layer_freq=1, first_k_dense_replace=0, norm_topk_prob=False,
        scoring_func="softmax", rms_norm_eps=1e-6, rope_theta=10000.0, rope_scaling=None,
        tie_word_embeddings=False),
}


class Config:
    def __init__(self, raw):
        self.model_type = raw.get("model_type", "deepseek_v3")
        if self.model_type not in DEFAULTS:
            raise ValueError(f"unsupported model_type {self.model_type!r}")
        merged = dict(DEFAULTS[self.model_type])
        merged.update(raw)  # present keys win, including explicit nulls
        for k, v in merged.items():
            setattr(self, k, v)

    @staticmethod
    def load(model_dir):
        with open(os.path.join(model_dir, "config.json")) as f:
            return Config(json.load(f))


# ---------------------------------------------------------------------------------------------
# Rotary embedding (with optional YaRN)

def yarn_get_mscale(scale, mscale):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_scaling_params(cfg):
    """None, or the YaRN parameters with their defaults filled in; any other type is an error,
    since silently ignoring it would make the reference agree with a wrong engine."""
    rs = cfg.rope_scaling
    if rs is None:
        return None
    kind = rs.get("type", rs.get("rope_type"))
    if kind != "yarn":
        raise ValueError(f"unsupported rope_scaling type {kind!r}")
    return dict(
        factor=float(rs["factor"]),
        original_max_position_embeddings=rs.get("original_max_position_embeddings", 4096),
        beta_fast=rs.get("beta_fast", 32), beta_slow=rs.get("beta_slow", 1),
        mscale=rs.get("mscale", 1), mscale_all_dim=rs.get("mscale_all_dim", 0))


def plain_inv_freq(d, theta):
    return 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)


def yarn_inv_freq(d, theta, factor, orig_max, beta_fast, beta_slow):
    """YaRN: keep the original frequencies for dims that rotate many times within the original
    context (high frequency), divide by `factor` for dims that rotate less than once (low
    frequency), blend linearly in between."""
    freq_extra = plain_inv_freq(d, theta)
    freq_inter = 1.0 / (factor * theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))

    def correction_dim(rotations):  # dim index whose wavelength fits `rotations` times in orig_max
        return d * math.log(orig_max / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), d - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(d // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    mask = 1.0 - ramp  # 1 = extrapolate (keep original frequency)
    return freq_inter * (1 - mask) + freq_extra * mask


def rope_tables(cfg, n_positions):
    """cos, sin of shape [n_positions, d/2] (already multiplied by YaRN's attention factor)."""
    d = cfg.qk_rope_head_dim
    yarn = rope_scaling_params(cfg)
    if yarn is None:
        inv_freq, scale = plain_inv_freq(d, cfg.rope_theta), 1.0
    else:
        inv_freq = yarn_inv_freq(d, cfg.rope_theta, yarn["factor"], yarn["original_max_position_embeddings"],
                                 yarn["beta_fast"], yarn["beta_slow"])
        scale = (yarn_get_mscale(yarn["factor"], yarn["mscale"])
                 / yarn_get_mscale(yarn["factor"], yarn["mscale_all_dim"]))
    angles = torch.outer(torch.arange(n_positions, dtype=torch.float64), inv_freq)
    return angles.cos() * scale, angles.sin() * scale


def apply_rope_interleaved(x, cos, sin):
    """Rotate pairs (x[2i], x[2i+1]) by angle pos * inv_freq[i]. x: [T, ..., d]; cos/sin: [T, d/2].
    HF's view/transpose + rotate_half is this same rotation with the rope dims permuted
    (evens first, odds second), identically in q and k, so q.k is unchanged."""
    shape = x.shape
    pairs = x.reshape(*shape[:-1], shape[-1] // 2, 2)
    even, odd = pairs[..., 0], pairs[..., 1]
    extra = (1,) * (x.dim() - 2)
    c = cos.reshape(cos.shape[0], *extra, cos.shape[1])
    s = sin.reshape(sin.shape[0], *extra, sin.shape[1])
    out = torch.stack((even * c - odd * s, even * s + odd * c), dim=-1)
    return out.reshape(shape)


def softmax_scale(cfg):
    scale = (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5
    yarn = rope_scaling_params(cfg)
    if yarn is not None and yarn["mscale_all_dim"]:
        m = yarn_get_mscale(yarn["factor"], yarn["mscale_all_dim"])
        scale *= m * m
    return scale


# ---------------------------------------------------------------------------------------------
# Blocks

def rms_norm(x, weight, eps):
    return x / torch.sqrt((x * x).mean(dim=-1, keepdim=True) + eps) * weight


def linear(x, weight):
    return x @ weight.T  # weights are stored [out_features, in_features], no biases in DeepSeek


def gated_mlp(x, w, prefix):
    """SiLU-gated MLP: down(silu(gate(x)) * up(x))."""
    gate = torch.nn.functional.silu(linear(x, w[prefix + "gate_proj.weight"]))
    return linear(gate * linear(x, w[prefix + "up_proj.weight"]), w[prefix + "down_proj.weight"])


def mla_attention(x, w, prefix, cfg, cos, sin):
    """Multi-head latent attention, computed naively: decompress k/v for every head."""
    T = x.shape[0]
    H = cfg.num_attention_heads
    nope, rope, vdim = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
    eps = cfg.rms_norm_eps

    if cfg.q_lora_rank is None:
        q = linear(x, w[prefix + "q_proj.weight"])
    else:
        q_latent = rms_norm(linear(x, w[prefix + "q_a_proj.weight"]), w[prefix + "q_a_layernorm.weight"], eps)
        q = linear(q_latent, w[prefix + "q_b_proj.weight"])
    q = q.reshape(T, H, nope + rope)
    q_nope, q_pe = q[..., :nope], q[..., nope:]

    kv_a = linear(x, w[prefix + "kv_a_proj_with_mqa.weight"])
    c_kv, k_pe = kv_a[:, :cfg.kv_lora_rank], kv_a[:, cfg.kv_lora_rank:]  # k_pe: one head shared by all
    kv = linear(rms_norm(c_kv, w[prefix + "kv_a_layernorm.weight"], eps), w[prefix + "kv_b_proj.weight"])
    kv = kv.reshape(T, H, nope + vdim)
    k_nope, v = kv[..., :nope], kv[..., nope:]

    q_pe = apply_rope_interleaved(q_pe, cos, sin)          # [T, H, rope]
    k_pe = apply_rope_interleaved(k_pe, cos, sin)          # [T, rope]

    scores = torch.einsum("thd,shd->hts", q_nope, k_nope) + torch.einsum("thd,sd->hts", q_pe, k_pe)
    scores = scores * softmax_scale(cfg)
    causal = torch.ones(T, T, dtype=torch.bool).triu(1)    # True above the diagonal = future
    scores = scores.masked_fill(causal, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("hts,shd->thd", probs, v).reshape(T, H * vdim)
    return linear(out, w[prefix + "o_proj.weight"])


def is_moe_layer(cfg, layer):
    return (cfg.n_routed_experts is not None and layer >= cfg.first_k_dense_replace
            and layer % cfg.moe_layer_freq == 0)


def route(x, w, prefix, cfg):
    """Router: (expert indices [T, k], weights [T, k]) per DeepSeek's MoEGate."""
    E = cfg.n_routed_experts
    k = cfg.num_experts_per_tok
    logits = linear(x, w[prefix + "gate.weight"])
    if cfg.scoring_func == "softmax":
        scores = torch.softmax(logits, dim=-1)
    elif cfg.scoring_func == "sigmoid":
        scores = torch.sigmoid(logits)
    else:
        raise ValueError(f"unsupported scoring_func {cfg.scoring_func!r}")

    method = cfg.topk_method
    if method in ("greedy", "gready"):
        weights, idx = torch.topk(scores, k, dim=-1)
    elif method in ("group_limited_greedy", "noaux_tc"):
        G = cfg.n_group
        T = x.shape[0]
        if method == "noaux_tc":
            choice = scores + w[prefix + "gate.e_score_correction_bias"]
            # a group's merit is the sum of its two best biased scores
            group_scores = choice.reshape(T, G, E // G).topk(2, dim=-1).values.sum(dim=-1)
        else:
            choice = scores
            group_scores = choice.reshape(T, G, E // G).max(dim=-1).values
        top_groups = group_scores.topk(cfg.topk_group, dim=-1).indices
        group_keep = torch.zeros(T, G, dtype=torch.bool).scatter(1, top_groups, True)
        expert_keep = group_keep.unsqueeze(-1).expand(T, G, E // G).reshape(T, E)
        masked = choice.masked_fill(~expert_keep, float("-inf"))
        idx = masked.topk(k, dim=-1).indices
        weights = scores.gather(1, idx)  # the bias steers selection only, never the weights
    else:
        raise ValueError(f"unsupported topk_method {method!r}")

    if cfg.model_type == "deepseek_v3":
        if k > 1 and cfg.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        weights = weights * cfg.routed_scaling_factor
    else:  # DeepSeek-V2 rule: either renormalize or scale, never both
        if k > 1 and cfg.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        else:
            weights = weights * cfg.routed_scaling_factor
    return idx, weights


def moe(x, w, prefix, cfg):
    idx, weights = route(x, w, prefix, cfg)
    out = torch.zeros_like(x)
    for expert in torch.unique(idx).tolist():
        token, slot = (idx == expert).nonzero(as_tuple=True)
        y = gated_mlp(x[token], w, f"{prefix}experts.{expert}.")
        out.index_add_(0, token, y * weights[token, slot].unsqueeze(-1))
    if cfg.n_shared_experts:  # None or 0 = no shared experts
        out = out + gated_mlp(x, w, prefix + "shared_experts.")
    return out


class _Float64Weights:
    """View of ModelWeights that hands out float64 (integers too, e.g. an I64 bias, are cast)."""

    def __init__(self, weights):
        self.weights = weights

    def __getitem__(self, name):
        return self.weights[name].to(torch.float64)

    def __contains__(self, name):
        return name in self.weights


def decoder_layer(x, w, layer, cfg, cos, sin):
    """One pre-norm decoder layer (MLA, then the dense MLP or the MoE) over positions 0.. of x."""
    eps = cfg.rms_norm_eps
    p = f"model.layers.{layer}."
    h = x + mla_attention(rms_norm(x, w[p + "input_layernorm.weight"], eps), w, p + "self_attn.", cfg, cos, sin)
    normed = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
    return h + (moe(normed, w, p + "mlp.", cfg) if is_moe_layer(cfg, layer) else gated_mlp(normed, w, p + "mlp."))


def forward(model_dir, tokens, mtp=False):
    """Logits [len(tokens), vocab_size] (float64) of one causal pass over `tokens`. mtp: instead the
    first multi-token-prediction module's [len(tokens) - 1, vocab], position i joining
    enorm(Emb(tokens[i + 1])) (embedding first, as DeepSeek's released eh_proj is laid out) with
    hnorm of the main model's normed output at i, then its decoder layer num_hidden_layers at
    positions 0.., shared_head.norm and the shared head (DeepSeek-V3 §2.2)."""
    cfg = Config.load(model_dir)
    w = _Float64Weights(ModelWeights(model_dir))
    tokens = torch.as_tensor(list(tokens), dtype=torch.long)
    if tokens.numel() == 0:
        raise ValueError("need at least one token")
    if tokens.min() < 0 or tokens.max() >= cfg.vocab_size:
        raise ValueError("token id out of range")
    T = tokens.numel()
    cos, sin = rope_tables(cfg, T)
    eps = cfg.rms_norm_eps

    embed = w["model.embed_tokens.weight"]
    x = embed[tokens]
    # layers >= num_hidden_layers (MTP modules) only with mtp
    for layer in range(cfg.num_hidden_layers):
        x = decoder_layer(x, w, layer, cfg, cos, sin)
    x = rms_norm(x, w["model.norm.weight"], eps)
    if mtp:
        p = f"model.layers.{cfg.num_hidden_layers}."
        e = rms_norm(embed[tokens[1:]], w[p + "enorm.weight"], eps)
        joined = torch.cat([e, rms_norm(x[:-1], w[p + "hnorm.weight"], eps)], dim=-1)
        y = decoder_layer(linear(joined, w[p + "eh_proj.weight"]), w, cfg.num_hidden_layers, cfg, cos[:T - 1],
                          sin[:T - 1])
        x = rms_norm(y, w[p + "shared_head.norm.weight"], eps)
    if cfg.tie_word_embeddings:
        # HF ties lm_head to the embedding, so the embedding is what a tied model computes with
        head = embed
        if "lm_head.weight" in w and not torch.equal(w["lm_head.weight"], embed):
            print("warning: tie_word_embeddings is set but lm_head.weight differs from the embedding; "
                  "using the embedding", file=sys.stderr)
    else:
        head = w["lm_head.weight"]
    return linear(x, head)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF model directory (config.json + safetensors)")
    parser.add_argument("--tokens", required=True, help="comma-separated token ids")
    parser.add_argument("--out", required=True, help="output .npy (float32 [n_tokens, vocab])")
    parser.add_argument("--mtp", action="store_true", help="the first MTP module's logits instead")
    args = parser.parse_args()
    tokens = [int(t) for t in args.tokens.split(",") if t.strip()]
    logits = forward(args.model, tokens, args.mtp)
    np.save(args.out, logits.numpy().astype(np.float32))


if __name__ == "__main__":
    main()
