"""bench/torch_model.py: the same char-level LM written in PyTorch, for side-by-side speed comparisons only.

Mirrors models/charlm: token embedding, pre-LayerNorm blocks (attention + GELU MLP),
final LayerNorm, head tied to the embedding, RoPE on adjacent pairs, GPT-2 init.
Attention kinds: "mha" (causal softmax attention) and "latent" (the causal latent bank
of docs/latent-attention.md, chunked form, with a local window), written with the same
math as the C++ layer. Not a dependency of the project: PyTorch is optional.
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


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        D = cfg["dim"]
        self.ln1 = nn.LayerNorm(D)
        if cfg["attn"] == "mha":
            self.attn = MHA(D, cfg["heads"], cfg["layers"])
        else:
            self.attn = LatentAttention(D, cfg["heads"], cfg["latents"], cfg["window"], cfg["chunk"])
        self.ln2 = nn.LayerNorm(D)
        self.fc = nn.Linear(D, 4 * D)
        self.proj = nn.Linear(4 * D, D)
        self.proj.residual = True

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class CharLM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.wte = nn.Embedding(cfg["vocab"], cfg["dim"])
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg["layers"]))
        self.ln_f = nn.LayerNorm(cfg["dim"])
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
