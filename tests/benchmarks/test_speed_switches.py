"""MODEL.CHANNELS_LAST and MODEL.COMPILE, applied by the plugin's Trainer.build_model."""
import torch

from mdpr_plugin.engine.trainer import Trainer
from modeling.mdpr_testutils import small_cfg


def _build(*overrides):
    torch.manual_seed(0)
    return Trainer.build_model(small_cfg(*overrides))


def test_switches_default_off():
    model = _build()
    conv = model.backbone.trunk.conv1.weight
    assert not conv.is_contiguous(memory_format=torch.channels_last)
    assert getattr(model, "_compiled_call_impl", None) is None


def test_channels_last_converts_every_convolution_weight():
    model = _build("MODEL.CHANNELS_LAST", True)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    # same values as the default build: only the layout changed
    reference = dict(_build().named_parameters())
    for name, param in model.named_parameters():
        assert torch.equal(param, reference[name]), name


def test_compile_is_in_place_and_keeps_the_checkpoint_keys():
    eager, compiled = _build(), _build("MODEL.COMPILE", True)
    assert type(compiled) is type(eager)  # not an OptimizedModule wrapper: fastreid's hooks see the model
    assert compiled._compiled_call_impl is not None
    assert list(compiled.state_dict()) == list(eager.state_dict())
