"""The authors' checkpoint key layout (``mdpr_plugin.modeling.authors_layout``) converts to this model's and back."""
import re

import torch

from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from mdpr_plugin.modeling import convert_authors_state_dict, is_authors_layout, to_authors_state_dict
from modeling.mdpr_testutils import batch, build, small_cfg

# Every key of the authors' layout starts like one of these.
AUTHORS_KEY = re.compile(
    r"^(generate\.backbone\.[0145]\."
    r"|generate\.backbone_(part|attn)\.[01]\."
    r"|generate\.embedding_hard_global\.(embedding\.weight|bn\.)"
    r"|generate\.embedding_hard_part\.\d+\.(embedding\.weight|bn\.)"
    r"|generate\.(embedding_attn_feature4|em3_1024|embedding_attn_feature3)\.(embedding\.weight|bn\.)"
    r"|generate\.attention_maker[34]\.(conv\.weight|conv3\.weight|bn\.)"
    r"|generate\.up_attn_4_3\.conv\.weight"
    r"|generate\.attn_bap[34]\.(pool\.p|embedding_layer\.\d+\.(embedding\.weight|bn\.))"
    r"|(hard_global_head|hard_part_head\.\d+|attn_feature4_head|attn_feature3_head|fusion_feat_head)"
    r"\.(pool_layer\.p|bottleneck\.0\.|weight)"
    r"|attn_bap_feature[43]_head\.(bottleneck\.0\.|weight)"
    r"|fusion\.(merge|output_part|output_attn|output)\.(0\.weight|1\.weight|2\.)"
    r"|predictor[12]\.(0\.weight|1\.|3\.weight|3\.bias))")


def eval_features(model, images):
    model.eval()
    with torch.no_grad():
        return model(images)


def test_authors_layout_loads_with_no_missing_or_unexpected_keys_and_same_features():
    images = batch()["images"]
    source = build(small_cfg(), seed=0)
    source(batch())  # one training step's BN statistics, so that buffers differ from a fresh model
    authors = to_authors_state_dict(source.state_dict())
    assert is_authors_layout(authors) and not is_authors_layout(source.state_dict())
    assert all(AUTHORS_KEY.match(k) for k in authors), [k for k in authors if not AUTHORS_KEY.match(k)]

    target = build(small_cfg(), seed=1)
    assert not torch.equal(eval_features(target, images), eval_features(source, images))
    incompatible = target.load_state_dict(convert_authors_state_dict(authors), strict=False)
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert torch.equal(eval_features(target, images), eval_features(source, images))


def test_example_keys_of_each_kind_map_where_expected():
    authors_keys = [
        "generate.backbone.0.weight", "generate.backbone.5.3.conv1.weight",
        "generate.backbone_part.1.2.bn3.running_mean", "generate.backbone_attn.0.0.downsample.0.weight",
        "generate.embedding_hard_part.1.embedding.weight", "generate.em3_1024.bn.bias",
        "generate.attention_maker3.conv3.weight", "generate.up_attn_4_3.conv.weight",
        "generate.attn_bap4.embedding_layer.1.bn.running_var", "generate.attn_bap3.pool.p",
        "hard_part_head.1.pool_layer.p", "attn_bap_feature3_head.bottleneck.0.weight",
        "fusion_feat_head.weight", "fusion.output.2.running_mean", "fusion.output_attn.1.weight",
        "predictor2.3.bias"]
    ours = convert_authors_state_dict({k: torch.zeros(1) for k in authors_keys})
    assert list(ours) == [
        "backbone.trunk.conv1.weight", "backbone.trunk.layer2.3.conv1.weight",
        "backbone.hard.layer4.2.bn3.running_mean", "backbone.soft.layer3.0.downsample.0.weight",
        "hard_branch.part_embeddings.1.conv.weight", "soft_branch.layer3_embedding.bn.bias",
        "soft_branch.attention3.conv3x3.weight", "soft_branch.guide.conv.weight",
        "soft_branch.bap4.embeddings.1.bn.running_var", "soft_branch.bap3.pool.p",
        "heads.hard_part_1.pool_layer.p", "heads.attn_bap3.bottleneck.0.weight",
        "heads.fusion.weight", "fusion.output.2.running_mean", "fusion.attn.1.weight",
        "distillation.predictor2.3.bias"]


def test_later_predictor_variant_and_module_prefix_convert_too():
    model = build(small_cfg())
    authors = to_authors_state_dict(model.state_dict())
    variant = {re.sub(r"^predictor([12])\.", r"module.predictor\1.conv.", k) if k.startswith("predictor")
               else "module." + k: v for k, v in authors.items()}
    assert any(k.startswith("module.predictor1.conv.3.") for k in variant)
    assert is_authors_layout(variant)
    assert convert_authors_state_dict(variant).keys() == model.state_dict().keys()


def test_full_size_model_keys_all_have_an_authors_name_and_round_trip():
    cfg = small_cfg("MODEL.BACKBONE.DEPTH", "101x", "MODEL.BACKBONE.WITH_IBN", True,
                    "MODEL.BACKBONE.EMBEDDING_DIM", 512, "MODEL.HEADS.NUM_CLASSES", 751)
    with torch.device("meta"):
        ours = META_ARCH_REGISTRY.get("MDPR")(cfg).state_dict()
    authors = to_authors_state_dict(ours)
    assert [k for k in authors if not AUTHORS_KEY.match(k)] == []
    assert "generate.backbone_attn.0.22.bn1.IN.weight" in authors  # R101-IBN's 23-block layer3
    assert list(convert_authors_state_dict(authors)) == list(ours)


def test_unknown_keys_pass_through():
    assert convert_authors_state_dict({"generate.something_new.weight": 1, "pixel_mean": 2}) == {
        "generate.something_new.weight": 1, "pixel_mean": 2}
