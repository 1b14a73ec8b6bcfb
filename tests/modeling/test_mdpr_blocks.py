"""MDPR's building blocks."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastreid.layers.pooling import GeneralizedMeanPoolingP
from mdpr_plugin.modeling import BAP, AttentionMaker, Embedding, FusionBlock, Guide, softmax_attn
from mdpr_plugin.modeling.blocks import MatmulConv2d
from modeling.mdpr_testutils import batch, build, small_cfg


def convs(module):
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def test_embedding_is_conv1x1_bn_relu_without_bias():
    block = Embedding(8, 4).eval()
    assert [(c.kernel_size, c.bias) for c in convs(block)] == [((1, 1), None)]
    x = torch.randn(2, 8, 3, 3)
    assert torch.equal(block(x), torch.relu(block.bn(block.conv(x))))
    assert torch.equal(block.bn.weight, torch.ones(4)) and torch.equal(block.bn.bias, torch.zeros(4))


def test_attention_maker_sums_a_1x1_and_a_padded_3x3_conv():
    block = AttentionMaker(8, 3).eval()
    assert [(c.kernel_size, c.padding, c.bias) for c in convs(block)] == [((1, 1), (0, 0), None),
                                                                          ((3, 3), (1, 1), None)]
    x = torch.randn(2, 8, 4, 2)
    expected = torch.relu(block.bn(block.conv1x1(x) + block.conv3x3(x)))
    assert block(x).shape == (2, 3, 4, 2) and torch.equal(block(x), expected)


def test_guide_is_conv1x1_relu():
    guide = Guide(3)
    x = torch.randn(2, 3, 4, 2)
    assert torch.equal(guide(x), torch.relu(guide.conv(x))) and guide.conv.bias is None


def test_softmax_attn_drops_the_last_background_map():
    raw = torch.randn(2, 3, 4, 2)
    assert torch.equal(softmax_attn(raw), torch.softmax(raw, dim=1)[:, :2])


def test_bap_pools_each_attention_weighted_map_with_its_own_embedding_and_a_shared_gem():
    bap = BAP(8, 2, 4).eval()
    assert isinstance(bap.pool, GeneralizedMeanPoolingP) and bap.pool.p.item() == 3
    assert bap.embeddings[0] is not bap.embeddings[1]
    attention, x = torch.rand(2, 2, 4, 2), torch.randn(2, 8, 4, 2)
    cat, pooled = bap(attention, x)
    for i in range(2):
        weighted = bap.embeddings[i](x * attention[:, i:i + 1])
        expected = weighted.clamp(min=1e-6).pow(3).mean(dim=(2, 3), keepdim=True).pow(1 / 3)
        assert torch.allclose(pooled[i], expected, atol=1e-5)
    assert cat.shape == (2, 8, 1, 1) and torch.equal(cat, torch.cat(pooled, 1))


def test_fusion_block_layout():
    block = FusionBlock(4, 6)
    assert [type(m).__name__ for m in block] == ["Conv2d", "MatmulConv2d", "BatchNorm", "ReLU"]
    assert list(block.state_dict())[:2] == ["0.weight", "1.weight"]  # the keys of plain convolutions
    assert [(c.kernel_size, c.bias) for c in convs(block)] == [((1, 1), None), ((3, 3), None)]


@pytest.mark.parametrize("kernel_size,padding,bias", [(3, 1, False), (3, 1, True), (1, 0, False), (3, 0, True)])
def test_the_matmul_convolution_is_the_convolution(kernel_size, padding, bias):
    torch.manual_seed(0)
    conv = MatmulConv2d(24, 16, kernel_size, padding=padding, bias=bias)
    x = torch.randn(3, 24, 8, 4, requires_grad=True)
    out, reference = conv(x), F.conv2d(x, conv.weight, conv.bias, padding=padding)
    assert out.shape == reference.shape and out.is_contiguous()
    assert torch.allclose(out, reference, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(out)
    params = [x] + list(conv.parameters())
    for got, expected in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(reference, params, grad)):
        assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # a channels-last input (MODEL.CHANNELS_LAST) gives a channels-last output
        assert conv(x.to(memory_format=torch.channels_last)).is_contiguous(memory_format=torch.channels_last)


def test_guide_reads_layer4_attention_before_the_softmax():
    model = build(small_cfg())
    seen = {}
    model.soft_branch.attention4.register_forward_hook(lambda m, i, o: seen.__setitem__("raw4", o))
    model.soft_branch.guide.register_forward_hook(lambda m, i, o: seen.__setitem__("guide_in", i[0]))
    model(batch())
    assert torch.equal(seen["guide_in"], seen["raw4"])
