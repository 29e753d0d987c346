"""HSPNet's network (Wang et al., ACM MM 2023, "Hierarchical Prompt Learning Using CLIP for
Multi-label Classification with Single Positive Labels"; METHODS.md §6.1).

A CLIP model whose image tower trains and whose text tower is frozen. Each class group (parent)
is described by the fixed prompt "a photo of a <group>."; its text feature t_g goes through a
graph convolution network over the parents, then a meta-net turns it into ``n_ctx`` context token
embeddings shared by the group's classes (children): the class prompt is
[SOS] + ctx(g) + "<classname>." through the frozen text encoder, then the same GCN over the
children. With image feature v: logits = 10 * cos(v, GCN(t_c)).

GCN(x) = gamma * A lrelu(A lrelu(A x W1) W2) W3 + (1 - gamma) * x (no biases, LeakyReLU 0.2,
D -> 2D -> 2D -> D, gamma learnable, initialised 0.9), one module for parents and children with
an adjacency each, built from CLIP text similarities (:func:`hierarchy_adjacency`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shards.base.errors import WsmlError

LOGIT_SCALE = 10.0  # the release's fixed scale of the cosine similarities
KEEP = 0.75  # fraction of each adjacency row kept (the diagonal included) before normalising
PARENT_PROMPT = "a photo of a {}."
PLACEHOLDER = "X"  # tokens whose embeddings the meta-net's context replaces


def hierarchy_adjacency(similarity: Tensor, reweight_p: float = 0.2, keep: float = KEEP) -> Tensor:
    """HSPNet's adjacency of one block (children or parents) from its cosine similarities
    (n, n): keep each row's floor(keep * n) largest entries, zero the rest and the diagonal,
    normalise each row to sum ``reweight_p`` and set the diagonal to 1 - reweight_p.

    The release divides by the row sum as it is; here negative similarities count as 0 and a
    row with nothing left keeps only its diagonal (the release gives NaN for groups of two and
    any row whose kept neighbours sum to 0; pretrained CLIP's text similarities are positive,
    so its adjacencies are unchanged)."""
    n = len(similarity)
    s = similarity.double().clamp(min=0)
    kept = torch.zeros_like(s, dtype=torch.bool)
    k = int(keep * n)
    if k > 0:
        kept.scatter_(1, s.topk(k, dim=1).indices, True)
    eye = torch.eye(n, dtype=torch.bool, device=s.device)
    s = torch.where(kept & ~eye, s, 0.0)
    total = s.sum(dim=1, keepdim=True)
    s = torch.where(total > 0, s / total.clamp(min=1e-12), 0.0) * reweight_p
    return torch.where(eye, 1.0 - reweight_p, s).to(similarity.dtype)


class GraphConv(nn.Module):
    """One graph convolution without bias (Kipf & Welling 2017): A x W."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        bound = 1.0 / math.sqrt(out_dim)
        self.weight = nn.Parameter(torch.empty(in_dim, out_dim).uniform_(-bound, bound))

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:  # (n, in), (n, n) -> (n, out)
        return adj.to(x.dtype) @ (x @ self.weight.to(x.dtype))


class HierarchicalGcn(nn.Module):
    """gamma * GCN(x) + (1 - gamma) * x with three graph convolutions D -> 2D -> 2D -> D."""

    def __init__(self, dim: int, gamma: float = 0.9):
        super().__init__()
        self.layers = nn.ModuleList(
            [GraphConv(dim, 2 * dim), GraphConv(2 * dim, 2 * dim), GraphConv(2 * dim, dim)]
        )
        self.act = nn.LeakyReLU(0.2)
        self.gamma = nn.Parameter(torch.full((1,), gamma))

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:  # (n, D), (n, n) -> (n, D)
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h, adj)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return self.gamma * h + (1 - self.gamma) * x


class PromptTextEncoder(nn.Module):
    """open_clip's text tower (``encode_text``) run on token embeddings assembled by the caller;
    the token ids give the pooled (end-of-text) position. Sequences are cut after the last
    pooled position: with the causal mask nothing after it reaches it (exact, ~8x less work
    than the 77-token context)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        tower = getattr(clip, "text", clip)  # CustomTextCLIP keeps it in .text
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
        if (
            not all(hasattr(tower, a) for a in needed)
            or getattr(tower, "cls_emb", None) is not None
        ):
            raise WsmlError(
                f"HSPNet needs a CLIP text transformer ({', '.join(needed)}); "
                f"{type(tower).__name__} is not one"
            )
        mask = getattr(tower, "attn_mask", None)
        pool = getattr(tower, "text_pool_type", getattr(tower, "pool_type", "argmax"))
        if mask is None or pool not in ("argmax", "eos"):
            raise WsmlError("HSPNet needs a causal CLIP text tower pooled at the end-of-text token")
        self.token_embedding = tower.token_embedding
        self.positional_embedding = tower.positional_embedding
        self.transformer = tower.transformer
        self.ln_final = tower.ln_final
        self.text_projection = tower.text_projection
        self.pool_type = pool
        self.eos_id = getattr(tower, "text_eos_id", getattr(tower, "eos_id", None))
        self.register_buffer("attn_mask", mask.clone(), persistent=False)

    @property
    def width(self) -> int:
        return self.token_embedding.weight.shape[1]

    def pooled_index(self, tokens: Tensor) -> Tensor:  # (N, T) -> (N,)
        if self.pool_type == "eos":
            return (tokens == self.eos_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)

    def used_length(self, tokens: Tensor) -> int:
        """Positions up to the last pooled token: the rest cannot change a causal tower's output."""
        return int(self.pooled_index(tokens).max()) + 1

    def forward(
        self, embeds: Tensor, tokens: Tensor, length: int | None = None
    ) -> Tensor:  # (N, T, W), (N, T) -> (N, D)
        """``length``: ``used_length(tokens)`` computed once for fixed prompts (no host sync, no
        graph break per step); measured here when not given."""
        idx = self.pooled_index(tokens)
        n = self.used_length(tokens) if length is None else length
        dtype = self.transformer.get_cast_dtype()
        x = embeds[:, :n].to(dtype) + self.positional_embedding[:n].to(dtype)
        x = self.ln_final(self.transformer(x, attn_mask=self.attn_mask[:n, :n]))
        x = x[torch.arange(len(x), device=x.device), idx]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x if self.text_projection is None else x @ self.text_projection


class HspNet(nn.Module):
    """HSPNet on an open_clip model: ``forward(images) -> (N, L)`` logits. ``groups[i]`` is
    the group of class ``i``; ``classes`` are the readable names that go into the prompts."""

    def __init__(
        self,
        clip: nn.Module,
        tokenizer,
        classes: Sequence[str],
        groups: Sequence[str],
        *,
        n_ctx: int = 4,
        reweight_p: float = 0.2,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        image_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        if len(classes) != len(groups):
            raise WsmlError(f"{len(classes)} classes but {len(groups)} class groups")
        parents = list(dict.fromkeys(groups))  # in order of first appearance
        self.visual = clip.visual
        self.text = PromptTextEncoder(clip).requires_grad_(False)
        self.n_ctx, self.parents = n_ctx, parents
        self.pretrained_cfg = {"mean": tuple(mean), "std": tuple(std)}
        if image_size is not None:  # CLIP's towers take one size only (timm's convention)
            self.pretrained_cfg.update(input_size=(3, *image_size), fixed_input_size=True)
        dim, width = _text_dim(self.text), self.text.width
        self.meta_net = nn.Sequential(
            nn.Linear(dim, width * n_ctx),
            nn.ReLU(inplace=True),
            nn.Linear(width * n_ctx, width * n_ctx),
        )
        self.gcn = HierarchicalGcn(dim)
        index = torch.tensor([parents.index(g) for g in groups])
        self.register_buffer("parent_index", index)  # (L,)
        self.register_buffer("parent_tokens", tokenizer([PARENT_PROMPT.format(g) for g in parents]))
        self.register_buffer("child_tokens", _child_tokens(tokenizer, classes, n_ctx))
        self.lengths = (
            self.text.used_length(self.parent_tokens),
            self.text.used_length(self.child_tokens),
        )  # the fixed prompts' used positions, measured once on the host
        plain = tokenizer([PARENT_PROMPT.format(c) for c in [*classes, *parents]])
        with torch.no_grad():
            t = F.normalize(self.text(self.text.token_embedding(plain), plain).float(), dim=-1)
        sim = t @ t.T  # (L + G, L + G), children first
        L = len(classes)
        self.register_buffer("child_adj", hierarchy_adjacency(sim[:L, :L], reweight_p))
        self.register_buffer("parent_adj", hierarchy_adjacency(sim[L:, L:], reweight_p))

    def class_features(self) -> Tensor:  # (L, D), unit norm
        with torch.no_grad():  # fixed prompts through the frozen tower: a constant
            tokens = self.parent_tokens
            parent = self.text(self.text.token_embedding(tokens), tokens, self.lengths[0])
        parent = self.gcn(parent, self.parent_adj)  # (G, D)
        ctx = self.meta_net(parent).view(len(parent), self.n_ctx, -1)[self.parent_index]
        tokens = self.child_tokens
        emb = self.text.token_embedding(tokens)  # (L, T, W)
        emb = torch.cat([emb[:, :1], ctx.to(emb.dtype), emb[:, 1 + self.n_ctx :]], dim=1)
        child = self.gcn(self.text(emb, tokens, self.lengths[1]), self.child_adj)
        return F.normalize(child, dim=-1)

    def forward(self, images: Tensor) -> Tensor:  # (N, 3, H, W) -> (N, L)
        image = F.normalize(self.visual(images), dim=-1)
        return LOGIT_SCALE * image @ self.class_features().to(image.dtype).T

    def inference_module(self) -> nn.Module:
        """The same logits with the class features computed once (they depend on no image):
        what predict runs and export folds into its graph."""
        return FixedClassifier(self.visual, self.class_features().detach(), LOGIT_SCALE)

    def param_groups(self, config: Any) -> list[dict]:
        """Adam groups as the release's: weight matrices with weight decay, other parameters
        without, at ``config.lr``; the GCN's at ``config.gcn_lr``. The text tower is frozen."""
        gcn = {id(p) for p in self.gcn.parameters()}
        groups: dict[tuple[bool, bool], list] = {}
        for p in self.parameters():
            if p.requires_grad:
                groups.setdefault((id(p) in gcn, p.ndim > 1), []).append(p)
        out = []
        for (is_gcn, decays), params in sorted(groups.items()):
            name = ("gcn-" if is_gcn else "") + ("decay" if decays else "no-decay")
            lr = config.gcn_lr if is_gcn else config.lr
            wd = config.weight_decay if decays else 0.0
            out.append({"params": params, "lr": lr, "weight_decay": wd, "name": name})
        return out


class FixedClassifier(nn.Module):
    """``scale`` x cos(image embedding, fixed class features): HSPNet at inference."""

    def __init__(self, visual: nn.Module, classes: Tensor, scale: float):
        super().__init__()
        self.visual, self.scale = visual, scale
        self.register_buffer("classes", classes)  # (L, D), unit norm

    def forward(self, images: Tensor) -> Tensor:  # (N, 3, H, W) -> (N, L)
        image = F.normalize(self.visual(images), dim=-1)
        return self.scale * image @ self.classes.to(image.dtype).T


def _text_dim(text: PromptTextEncoder) -> int:
    proj = text.text_projection
    if proj is None:
        return text.width
    return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]


def _child_tokens(tokenizer, classes: Sequence[str], n_ctx: int) -> Tensor:
    """Token ids of "X X X X <class>.", checking that the placeholders are tokens 1..n_ctx."""
    prefix = " ".join([PLACEHOLDER] * n_ctx)
    tokens = tokenizer([f"{prefix} {c}." for c in classes])  # (L, T)
    x = tokenizer([PLACEHOLDER])[0, 1]
    if not bool((tokens[:, 1 : 1 + n_ctx] == x).all()):
        raise WsmlError(f"the tokenizer does not make {prefix!r} {n_ctx} tokens after [SOS]")
    return tokens


def create_hspnet(
    model_name: str,
    classes: Sequence[str],
    groups: Sequence[str],
    *,
    weights: str | os.PathLike | None = None,
    pretrained: str = "openai",
    n_ctx: int = 4,
    reweight_p: float = 0.2,
) -> HspNet:
    """HSPNet on the open_clip model ``model_name``: ``weights`` None loads the tag
    ``pretrained`` (from the hub cache), ``"none"`` gives random weights, a path a local file
    (published as ``pretrained`` when the model has that tag, for its QuickGELU and
    preprocessing). Class and group names are made readable for the prompts."""
    from models.clip import create_clip, list_clip_tags
    from models.prompts import readable_class_name
    from models.weights import WeightsUnavailableError, looks_like_path

    weights = pretrained if weights is None else weights
    file_tag = None
    if looks_like_path(weights) and pretrained in list_clip_tags(model_name):
        file_tag = pretrained
    try:
        clip = create_clip(model_name, weights, file_tag=file_tag)
    except WeightsUnavailableError as e:
        raise WeightsUnavailableError(
            f"{e} (Training: --weights PATH; -o pretrained=TAG names the tag it was published as.)"
        ) from e
    model = HspNet(
        clip.model,
        clip.tokenizer,
        [readable_class_name(c) for c in classes],
        [g.replace("_", " ") for g in groups],
        n_ctx=n_ctx,
        reweight_p=reweight_p,
        mean=clip.preprocess.mean,
        std=clip.preprocess.std,
        image_size=clip.preprocess.image_size,
    )
    prov = clip.provenance
    model.weights_info = {
        "backbone": model_name,
        "weights": prov.pretrained,
        "source": prov.source,
        "sha256": prov.sha256,
        "open_clip": prov.open_clip_version,
    }
    return model.train()
