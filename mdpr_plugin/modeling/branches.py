"""MDPR's two content branches and their fusion, each with the heads it feeds.

The branches take the maps of their own (layer3, layer4) copy, which live in the model's ``backbone``
module so that ``MODEL.FREEZE_LAYERS: [backbone]`` covers them. ``head_specs`` is static so that the
model can build the heads from it before the branches, in the order that fixes their initial weights.
"""
from dataclasses import dataclass
from typing import List, Optional

import torch
from torch import nn

from ..errors import InputError
from .blocks import BAP, AttentionMaker, Embedding, FusionBlock, Guide, softmax_attn
from .heads import HeadSpec


class HardContentBranch(nn.Module):
    """Uniform horizontal partition: a global embedding plus one embedding per stripe."""

    def __init__(self, in_channels, embedding_dim, num_parts, norm="BN"):
        super().__init__()
        self.num_parts = num_parts
        self.global_embedding = Embedding(in_channels, embedding_dim, norm)
        self.part_embeddings = nn.ModuleList(
            Embedding(in_channels, embedding_dim, norm) for _ in range(num_parts))

    @staticmethod
    def head_specs(embedding_dim, num_parts):
        """The heads this branch feeds, in loss-key order: the global map and each stripe."""
        return [HeadSpec("hard_global", embedding_dim)] + [
            HeadSpec(f"hard_part_{i}", embedding_dim) for i in range(num_parts)]

    def forward(self, x4):
        """x4: layer4 map (B x F x H x W) -> (B x E x H x W, [B x E x H/P x W] * P)."""
        stripes = torch.chunk(x4, self.num_parts, dim=2)
        # torch.chunk returns fewer pieces when H is too small; fail here rather than in zip below.
        if len(stripes) != self.num_parts:
            raise InputError(
                f"the layer4 map is {x4.shape[2]} rows high and cannot be cut into PART_NUM="
                f"{self.num_parts} stripes; use a taller input or a smaller PART_NUM")
        parts = [embed(stripe) for embed, stripe in zip(self.part_embeddings, stripes)]
        return self.global_embedding(x4), parts


@dataclass
class SoftBranchOutput:
    """What the soft branch produced; the attention / BAP fields stay None when not computed."""
    feature4: torch.Tensor                    # B x E x H x W
    feature3: torch.Tensor                    # B x E x H x W
    attention4: Optional[torch.Tensor] = None  # B x M x H x W (softmaxed, background dropped)
    attention3: Optional[torch.Tensor] = None
    bap4: Optional[torch.Tensor] = None        # B x M*E x 1 x 1
    bap3: Optional[torch.Tensor] = None
    pooled4: Optional[List[torch.Tensor]] = None  # M x (B x E x 1 x 1)
    pooled3: Optional[List[torch.Tensor]] = None

    def head_inputs(self):
        """Head name -> what it reads (``SoftContentBranch.head_specs``); the BAP heads only when BAP was computed."""
        inputs = {"attn_feature4": self.feature4, "attn_feature3": self.feature3}
        if self.bap4 is not None:
            inputs.update(attn_bap4=self.bap4, attn_bap3=self.bap3)
        return inputs


class SoftContentBranch(nn.Module):
    """Attention (foreground vs background) at two granularities, layer4 and layer3, each pooled by BAP too."""

    def __init__(self, layer3_channels, layer4_channels, embedding_dim, num_attn, guided=True, norm="BN"):
        super().__init__()
        maps = num_attn + 1  # + background
        self.feature4_embedding = Embedding(layer4_channels, embedding_dim, norm)
        self.attention4 = AttentionMaker(layer4_channels, maps, norm)
        self.guide = Guide(maps) if guided else None
        self.attention3 = AttentionMaker(layer3_channels + (maps if guided else 0), maps, norm)
        self.layer3_embedding = Embedding(layer3_channels, layer3_channels, norm)
        self.feature3_embedding = Embedding(layer3_channels, embedding_dim, norm)
        self.bap4 = BAP(layer4_channels, num_attn, embedding_dim, norm)
        self.bap3 = BAP(layer3_channels, num_attn, embedding_dim, norm)

    @staticmethod
    def head_specs(embedding_dim, num_attn):
        """The heads this branch feeds, in loss-key order. The BAP vectors (M*E wide, already pooled) get
        heads trained with cross-entropy only, whatever MODEL.LOSSES.NAME says (as in the authors' model), and
        left out of the eval feature, so that BAP runs in training only; fastreid logs the layer4 BAP head's
        accuracy."""
        e, bap = embedding_dim, num_attn * embedding_dim
        bap_policy = {"with_triplet": False, "follows_loss_names": False, "in_eval_feature": False}
        return [HeadSpec("attn_feature4", e),
                HeadSpec("attn_bap4", bap, "Identity", **bap_policy, logs_accuracy=True),
                HeadSpec("attn_feature3", e),
                HeadSpec("attn_bap3", bap, "Identity", **bap_policy)]

    def attention(self, x3, x4, include_background=False):
        """Softmaxed attention (B x M x H x W) of layer4 and layer3; with ``include_background`` all
        M+1 channels (B x (M+1) x H x W), the background last, as the visualisation draws them."""
        raw4 = self.attention4(x4)
        # The guide takes layer4's attention before the softmax.
        raw3 = self.attention3(torch.cat([x3, self.guide(raw4)], dim=1) if self.guide is not None else x3)
        if include_background:
            return torch.softmax(raw4, dim=1), torch.softmax(raw3, dim=1)
        return softmax_attn(raw4), softmax_attn(raw3)

    def forward(self, x3, x4, with_attention=True, with_bap=True):
        """x3, x4: this branch's layer3 / layer4 maps. BAP is only needed by the training-only BAP heads."""
        x3e = self.layer3_embedding(x3)
        out = SoftBranchOutput(feature4=self.feature4_embedding(x4), feature3=self.feature3_embedding(x3e))
        if with_attention or with_bap:
            out.attention4, out.attention3 = self.attention(x3, x4)
        if with_bap:
            out.bap4, out.pooled4 = self.bap4(out.attention4, x4)
            out.bap3, out.pooled3 = self.bap3(out.attention3, x3e)
        return out


class Fusion(nn.Module):
    """Fuses the hard and soft maps into one B x 4E x H x W map."""

    def __init__(self, embedding_dim, norm="BN"):
        super().__init__()
        e = embedding_dim
        self.merge_parts = FusionBlock(e, e, norm)
        self.part = FusionBlock(2 * e, 2 * e, norm)
        self.attn = FusionBlock(2 * e, 2 * e, norm)
        self.output = FusionBlock(4 * e, 4 * e, norm)

    @staticmethod
    def head_specs(embedding_dim):
        """The one head the fused map feeds."""
        return [HeadSpec("fusion", 4 * embedding_dim)]

    def forward(self, hard_global, hard_parts, feature4, feature3):
        merged_parts = self.merge_parts(torch.cat(hard_parts, dim=2))  # stripes stacked back along height
        part = self.part(torch.cat([merged_parts, hard_global], dim=1))
        attn = self.attn(torch.cat([feature4, feature3], dim=1))
        return self.output(torch.cat([part, attn], dim=1))

