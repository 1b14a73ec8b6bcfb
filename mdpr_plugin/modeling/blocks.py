"""MDPR's small building blocks.

Every conv / BN here starts from fastreid's ``weights_init_kaiming``. ``norm`` is a fastreid norm name
(``get_norm``): MDPR passes ``blocks_norm(MODEL.BACKBONE.NORM)`` so that e.g. SyncBN covers these blocks too.
"""
import torch
import torch.nn.functional as F
from torch import nn

from fastreid.layers import get_norm
from fastreid.layers.pooling import GeneralizedMeanPoolingP
from fastreid.layers.weight_init import weights_init_kaiming

from ..errors import InputError

_NORMS = ("BN", "syncBN", "GhostBN", "FrozenBN", "GN")  # fastreid's get_norm names


def blocks_norm(norm):
    """The norm of MDPR's own blocks for ``MODEL.BACKBONE.NORM``, or an InputError saying why it cannot be used.

    FrozenBN freezes the backbone's (pretrained) statistics; MDPR's blocks start untrained, where a frozen BN
    would stay the identity, so they use BN. fastreid's GN (GroupNorm, 32 groups) needs widths that are multiples
    of 32, which MDPR's ATTN_NUM + 1 attention maps are not.
    """
    if norm == "GN":
        raise InputError(
            "MODEL.BACKBONE.NORM GN cannot be used with MDPR: fastreid's GN is GroupNorm with 32 groups, which needs "
            "every normalised width to be a multiple of 32, and MDPR normalises its ATTN_NUM + 1 attention maps "
            "(and E-wide embeddings). Use BN, syncBN, GhostBN or FrozenBN.")
    if norm not in _NORMS:
        raise InputError(f"MODEL.BACKBONE.NORM {norm!r} is not one of fastreid's norms: {', '.join(_NORMS)}.")
    return "BN" if norm == "FrozenBN" else norm


class Embedding(nn.Module):
    """conv1x1 (no bias) -> BN -> ReLU: maps a feature map to another width."""

    def __init__(self, in_channels, out_channels, norm="BN"):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = get_norm(norm, out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.apply(weights_init_kaiming)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class AttentionMaker(nn.Module):
    """BN(conv1x1(x) + conv3x3(x)) -> ReLU: raw attention, M foreground maps + 1 background map."""

    def __init__(self, in_channels, num_maps, norm="BN"):
        super().__init__()
        self.conv1x1 = nn.Conv2d(in_channels, num_maps, 1, bias=False)
        self.conv3x3 = nn.Conv2d(in_channels, num_maps, 3, padding=1, bias=False)
        self.bn = get_norm(norm, num_maps)
        self.relu = nn.ReLU(inplace=True)
        self.apply(weights_init_kaiming)

    def forward(self, x):
        return self.relu(self.bn(self.conv1x1(x) + self.conv3x3(x)))


class Guide(nn.Module):
    """conv1x1 (no bias) -> ReLU on layer4's raw attention, fed to layer3's attention maker.

    The paper resamples layer4's attention to layer3's size first; with the required last stride 1
    both maps have the same size, so that resampling is the identity and is left out.
    """

    def __init__(self, num_maps):
        super().__init__()
        self.conv = nn.Conv2d(num_maps, num_maps, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.apply(weights_init_kaiming)

    def forward(self, raw_attention):
        return self.relu(self.conv(raw_attention))


def softmax_attn(raw_attention):
    """Softmax over the M+1 maps; keep the M foreground maps (the last one is background)."""
    return torch.softmax(raw_attention, dim=1)[:, :-1]


class BAP(nn.Module):
    """Bilinear attention pooling: ``f_i = GeM(Embedding_i(x * a_i))`` for each attention map i.

    One learnable GeM (p starts at 3) is shared by all maps; each map has its own Embedding.
    Returns ``cat_i f_i`` (B x M*E x 1 x 1) and the list ``[f_i]`` (each B x E x 1 x 1).
    """

    def __init__(self, in_channels, num_attn, out_channels, norm="BN"):
        super().__init__()
        self.pool = GeneralizedMeanPoolingP(3)
        self.embeddings = nn.ModuleList(
            Embedding(in_channels, out_channels, norm) for _ in range(num_attn))

    def forward(self, attention, features):
        pooled = [self.pool(embed(features * attention[:, i:i + 1]))
                  for i, embed in enumerate(self.embeddings)]
        return torch.cat(pooled, dim=1), pooled


class MatmulConv2d(nn.Conv2d):
    """A stride-1 convolution that, on the CPU, runs as one matrix product over every position of the batch.

    The fusion blocks' 3x3 convolutions have E to 4E channels (512-2048) on small maps (8 x 4 at 128x64), where
    the CPU's direct convolution is far from its matrix-product speed; the product of the weight (O x C*k*k) and
    the batch's unfolded patches (C*k*k x B*H*W) is one large, efficient product (docs/benchmarks.md). Same
    parameters and maths, float32 rounding aside; it holds the unfolded patches (k*k times the input) for the
    backward pass. On CUDA, and while exporting to ONNX, the ordinary convolution runs.
    """

    def __init__(self, in_channels, out_channels, kernel_size, padding=0, bias=False):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)

    def forward(self, x):
        if x.device.type != "cpu" or torch.onnx.is_in_onnx_export():
            return super().forward(x)
        b, _, h, w = x.shape
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        h, w = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1                       # the output's size
        patches = F.unfold(x, self.kernel_size, padding=self.padding)          # B x C*k*k x H*W
        patches = patches.transpose(0, 1).reshape(patches.shape[1], b * h * w)  # C*k*k x B*H*W
        out = self.weight.flatten(1) @ patches                                  # O x B*H*W
        if self.bias is not None:
            out = out + self.bias[:, None]
        layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return out.view(-1, b, h, w).transpose(0, 1).contiguous(memory_format=layout)  # MODEL.CHANNELS_LAST kept


class FusionBlock(nn.Sequential):
    """conv1x1 -> conv3x3 -> BN -> ReLU, no biases and no activation between the two convs."""

    def __init__(self, in_channels, out_channels, norm="BN"):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            MatmulConv2d(out_channels, out_channels, 3, padding=1, bias=False),
            get_norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )
        self.apply(weights_init_kaiming)

