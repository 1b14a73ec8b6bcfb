"""Flip test: the flipped pass must see the image normalised once (fastreid's normalises it twice)."""
import torch
from torch import nn

import mdpr_plugin  # noqa: F401
from fastreid.evaluation.evaluator import DatasetEvaluator
from fastreid.evaluation.evaluator import inference_on_dataset as fastreid_inference_on_dataset
from mdpr_plugin.evaluation import inference_on_dataset

MEAN = torch.tensor([100.0, 120.0, 140.0]).view(1, 3, 1, 1)
STD = torch.tensor([50.0, 60.0, 70.0]).view(1, 3, 1, 1)


class InPlaceNormalisingModel(nn.Module):
    """Like fastreid's Baseline: ``preprocess_image`` normalises ``inputs["images"]`` in place."""

    def __init__(self):
        super().__init__()
        self.register_buffer("pixel_mean", MEAN.clone())
        self.register_buffer("pixel_std", STD.clone())
        self.seen = []  # the normalised images of each forward pass

    def forward(self, batched_inputs):
        images = batched_inputs["images"]
        images.sub_(self.pixel_mean).div_(self.pixel_std)
        self.seen.append(images.clone())
        return images.flatten(1)


class Recorder(DatasetEvaluator):
    def reset(self):
        self.outputs = []

    def process(self, inputs, outputs):
        self.outputs.append(outputs)

    def evaluate(self):
        return {}


class Loader:
    def __init__(self, batches):
        self.batches = batches
        self.dataset = [None] * sum(len(b["images"]) for b in batches)

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


def run(inference):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 8, 4, generator=generator) * 255
    loader = Loader([{"images": images.clone(), "targets": torch.tensor([1, 2]),
                      "camids": torch.tensor([0, 1])}])
    model, recorder = InPlaceNormalisingModel(), Recorder()
    inference(model, loader, recorder, flip_test=True)
    return images, model, recorder


def normalised(images):
    return (images - MEAN) / STD


def test_flipped_pass_sees_a_once_normalised_image():
    images, model, recorder = run(inference_on_dataset)
    assert len(model.seen) == 2
    torch.testing.assert_close(model.seen[0], normalised(images))
    torch.testing.assert_close(model.seen[1], normalised(images.flip(dims=[3])))
    expected = (normalised(images).flatten(1) + normalised(images.flip(dims=[3])).flatten(1)) / 2
    torch.testing.assert_close(recorder.outputs[0], expected)


def test_fastreids_flip_test_normalises_twice():
    # the bug the plugin's inference_on_dataset fixes: this is what fastreid's own loop feeds the model
    images, model, _ = run(fastreid_inference_on_dataset)
    assert not torch.allclose(model.seen[1], normalised(images.flip(dims=[3])))
    torch.testing.assert_close(model.seen[1], normalised(normalised(images).flip(dims=[3])))


def test_model_mode_is_restored():
    model = InPlaceNormalisingModel().train()
    loader = Loader([{"images": torch.rand(1, 3, 4, 2), "targets": torch.tensor([0]),
                      "camids": torch.tensor([0])}])
    inference_on_dataset(model, loader, Recorder())
    assert model.training and len(model.seen) == 1  # no flipped pass without flip_test
