"""bench/torch_model.py: the same char-level LM written in PyTorch, for side-by-side speed comparisons only.

Mirrors models/charlm: token embedding, pre-norm blocks (attention + feed-forward), final
norm, head tied to the embedding, RoPE on adjacent pairs, GPT-2 init. Parameter names are
the checkpoint's (docs/checkpoint.md). The kinds, chosen by the config keys below, are
written with the same math as the C++ layers:

  attn: "mha" (causal softmax attention) or "latent" (the causal latent bank of
        docs/latent-attention.md, chunked form, with a local window)
  ffn:  "gelu" (fc D -> 4D, gelu_tanh, proj 4D -> D; the default) or "swiglu"
        (w2(silu(w1 x) * w3 x), hidden size 8 * ceil(floor(8D/3) / 8))
  norm: "layernorm" (the default) or "rmsnorm" (x / sqrt(mean(x^2) + eps) * weight, no bias)

An unknown kind raises ValueError naming the kinds this file knows. Init as in the C++ code:
Linear and embedding weights N(0, 0.02^2), biases 0, the residual output projections
(attention proj, mlp proj or w2) N(0, (0.02 / sqrt(2 layers))^2), norm gains 1.
Not a dependency of the project: PyTorch is optional.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def rope(x, first_position=0, base=10000.0):
    """x (..., T, d): rotate adjacent pairs (2i, 2i+1) by position * base^(-2i/d)."""
    T, d = x.shape[-2], x.shape[-1]
    pos = torch.arange(first_position, first_position + T, dtype=torch.float64)
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos[:, None] * inv[None, :]
    cos, sin = ang.cos().float(), ang.sin().float()
    a, b = x[..., 0::2], x[..., 1::2]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return out.flatten(-2)


class MHA(nn.Module):
    def __init__(self, dim, heads, layers):
        super().__init__()
        self.h = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj.residual = True

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)
        q, k, v = (t.view(B, T, self.h, D // self.h).transpose(1, 2) for t in (q, k, v))
        q, k = rope(q), rope(k)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D // self.h)
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, D)
        return self.proj(y)


class LatentAttention(nn.Module):
    """Causal latent-bank attention, chunked (docs/latent-attention.md)."""

    def __init__(self, dim, heads, latents, window, chunk):
        super().__init__()
        self.h, self.m, self.w, self.c = heads, latents, window, chunk
        self.qkv = nn.Linear(dim, 3 * dim)
        self.latents = nn.Parameter(torch.randn(latents, dim) * 0.02)
        self.proj = nn.Linear(dim, dim)
        self.proj.residual = True

    def forward(self, x):
        B, T, D = x.shape
        H, d, M, W, C = self.h, D // self.h, self.m, self.w, self.c
        q, k, v = self.qkv(x).split(D, dim=2)
        q, k, v = (t.view(B, T, H, d).transpose(1, 2) for t in (q, k, v))  # (B, H, T, d)
        qr, kr = rope(q), rope(k)
        lat = self.latents.view(M, H, d).transpose(0, 1)                    # (H, M, d)
        a = (lat @ k.transpose(-2, -1)) / math.sqrt(d)                      # (B, H, M, T)
        scale = 1.0 / math.sqrt(d)
        mu = torch.full((B, H, M, 1), -1e30)
        Z = torch.zeros(B, H, M, 1)
        SK = torch.zeros(B, H, M, d)
        SV = torch.zeros(B, H, M, d)
        outs = []
        for c0 in range(0, T, C):
            c1 = min(T, c0 + C)
            n = c1 - c0
            ac = a[..., c0:c1]                                              # (B, H, M, n)
            new_mu = torch.maximum(mu, ac.max(-1, keepdim=True).values).detach()
            r = torch.exp(mu - new_mu)
            SK, SV, Z, mu = SK * r, SV * r, Z * r, new_mu
            E = torch.exp(ac - mu)                                          # (B, H, M, n)
            Zc = (Z + E.cumsum(-1)).transpose(-2, -1)                       # (B, H, n, M)
            q_c, k_c, v_c = qr[:, :, c0:c1], kr[:, :, c0:c1], v[:, :, c0:c1]
            causal = torch.ones(n, n, dtype=torch.bool).tril()
            qk = (q_c @ k_c.transpose(-2, -1)) * causal                     # (B, H, n, n)
            lat_scores = (q_c @ SK.transpose(-2, -1) + qk @ E.transpose(-2, -1)) / Zc * scale
            if W > 0:
                s0 = max(0, c0 - W + 1)
                kw, vw = kr[:, :, s0:c1], v[:, :, s0:c1]
                t_idx = torch.arange(c0, c1)[:, None]
                s_idx = torch.arange(s0, c1)[None, :]
                band = (s_idx <= t_idx) & (s_idx > t_idx - W)
                loc = (q_c @ kw.transpose(-2, -1)) * scale
                loc = loc.masked_fill(~band, float("-inf"))
                p = torch.cat((lat_scores, loc), -1).softmax(-1)
                p_lat, p_loc = p[..., :M], p[..., M:]
                local_out = p_loc @ vw
            else:
                p_lat = lat_scores.softmax(-1)
                local_out = 0
            pz = p_lat / Zc                                                 # (B, H, n, M)
            o = pz @ SV + ((pz @ E) * causal) @ v_c + local_out
            outs.append(o)
            SK = SK + E @ k_c
            SV = SV + E @ v_c
            Z = Z + E.sum(-1, keepdim=True)
        y = torch.cat(outs, 2).transpose(1, 2).reshape(B, T, D)
        return self.proj(y)


class GeluMLP(nn.Module):
    """proj(gelu_tanh(fc x)), fc D -> 4D, proj 4D -> D."""

    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, 4 * dim)
        self.proj = nn.Linear(4 * dim, dim)
        self.proj.residual = True

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


def swiglu_hidden(dim):
    """8 * ceil(floor(8 dim / 3) / 8): 344 for dim 128, 1024 for 384, 48 for 16."""
    return 8 * -(-(8 * dim // 3) // 8)


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x), w1 and w3 D -> H, w2 H -> D."""

    def __init__(self, dim):
        super().__init__()
        hidden = swiglu_hidden(dim)
        self.w1 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(hidden, dim)
        self.w2.residual = True

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis; gain 1, no bias."""

    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + self.eps) * self.weight


ATTENTION = {
    "mha": lambda cfg: MHA(cfg["dim"], cfg["heads"], cfg["layers"]),
    "latent": lambda cfg: LatentAttention(cfg["dim"], cfg["heads"], cfg["latents"], cfg["window"], cfg["chunk"]),
}
FFN = {"gelu": GeluMLP, "swiglu": SwiGLU}
NORM = {"layernorm": lambda dim: nn.LayerNorm(dim, eps=1e-5), "rmsnorm": lambda dim: RMSNorm(dim, eps=1e-5)}


def kind(cfg, key, table, default=None):
    """The constructor for cfg[key] (or the default when the key is absent); unknown kinds raise."""
    name = cfg.get(key, default)
    if name not in table:
        raise ValueError(f"torch_model: {key} = {name!r} is not a kind this file knows ({', '.join(table)})")
    return table[name]


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        D = cfg["dim"]
        norm = kind(cfg, "norm", NORM, "layernorm")
        self.ln1 = norm(D)
        self.attn = kind(cfg, "attn", ATTENTION)(cfg)
        self.ln2 = norm(D)
        self.mlp = kind(cfg, "ffn", FFN, "gelu")(D)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.wte = nn.Embedding(cfg["vocab"], cfg["dim"])
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg["layers"]))
        self.ln_f = kind(cfg, "norm", NORM, "layernorm")(cfg["dim"])
        for m in self.modules():  # GPT-2 init
            if isinstance(m, (nn.Linear, nn.Embedding)):
                std = 0.02 / math.sqrt(2 * cfg["layers"]) if getattr(m, "residual", False) else 0.02
                nn.init.normal_(m.weight, 0.0, std)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, idx, targets):
        x = self.wte(idx)
        for b in self.blocks:
            x = b(x)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
