"""The MDPR meta-architecture: Fu et al., "Mutual Distillation Learning for Person Re-Identification"."""
import logging

import torch
from torch import nn

from fastreid.config import configurable
from fastreid.modeling.losses import cross_entropy_loss, log_accuracy, triplet_loss
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from fastreid.utils import events

from ..errors import InputError
from ..registry_names import check_loss_names
from .authors_layout import convert_authors_keys
from .backbone import build_split_backbone
from .blocks import blocks_norm
from .branches import Fusion, HardContentBranch, SoftContentBranch
from .distillation import MutualDistillation
from .heads import MDPRHead
from .losses import attention_diversity_loss, attention_sparsity_loss

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class MDPR(nn.Module):
    """Hard (stripes) and soft (attention) content branches on a shared trunk, fused and mutually distilled.

    ``forward(batched_inputs)`` takes fastreid's batch dict (or an image tensor at eval):
    - training: a dict of losses (keys ``loss_<head>_cls``, ``loss_<head>_triplet``,
      ``loss_diversity_loss_{4,3}``, ``loss_diversity_loss_reg_{4,3}``, ``loss_mutual_distillation``);
    - eval: the B x ``eval_feature_dim`` feature, the BNNeck outputs of the heads in
      ``eval_feature_names`` concatenated. With ``OUTPUT_ALL`` the soft branch's attention maps of the
      batch are also kept on ``self.last_attention_maps`` (see ``attention_maps``).
    Each branch declares the heads it feeds (``head_specs``): every head is trained with the identity losses
    ``MODEL.LOSSES.NAME`` names, cross-entropy and / or triplet (both by default, as the paper does), with their
    CE / TRI settings, as the authors' model reads it; the soft branch's BAP heads, by their HeadSpec, with
    cross-entropy alone whatever it names. The attention and distillation losses have their own switches.

    Loading a state dict in the authors' layout (``generate.backbone.*``, ...) converts it, whoever loads it:
    ``load_state_dict``, fastreid's ``Checkpointer``, ``DefaultPredictor``.
    """

    # The version torch records for this module in a state dict's metadata: 2, this plugin's key names. Version
    # 1 (torch's default, as the authors' code wrote) or none (a plain dict) may be in the authors' layout.
    _version = 2

    @configurable
    def __init__(self, *, backbone, hard_branch, soft_branch, fusion, distillation, heads, head_specs,
                 pixel_mean, pixel_std, loss_kwargs, output_all=False):
        """Modules are built by ``from_config``; a disabled part is None."""
        super().__init__()
        self.backbone = backbone  # one child, so that MODEL.FREEZE_LAYERS: [backbone] freezes all of it
        self.hard_branch = hard_branch
        self.soft_branch = soft_branch
        self.fusion = fusion
        self.distillation = distillation
        self.heads = heads  # nn.ModuleDict: head name -> MDPRHead, in loss-key order
        self.head_specs = {spec.name: spec for spec in head_specs}  # head name -> HeadSpec (its loss policy)
        self.loss_kwargs = loss_kwargs
        self.output_all = output_all
        self.last_attention_maps = None
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(1, -1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        with_hard, with_soft = cfg.HARD_BRANCH_ENABLE, cfg.SOFT_BRANCH_ENABLE
        if not (with_hard or with_soft):
            raise InputError("HARD_BRANCH_ENABLE and SOFT_BRANCH_ENABLE are both False: MDPR needs one branch")
        if cfg.MODEL.HEADS.EMBEDDING_DIM:
            raise InputError(
                "MDPR sets its width with MODEL.BACKBONE.EMBEDDING_DIM and its heads add no reduction: "
                f"set MODEL.HEADS.EMBEDDING_DIM 0 (got {cfg.MODEL.HEADS.EMBEDDING_DIM})")
        both = with_hard and with_soft
        for key in ("FUSION_ENABLE", "DISTILLATION_ENABLE"):
            if cfg[key] and not both:
                logger.warning(f"{key} is True but needs both branches; with one branch disabled it is skipped")

        e, p, m = cfg.MODEL.BACKBONE.EMBEDDING_DIM, cfg.PART_NUM, cfg.ATTN_NUM
        if p < 1 or m < 1:
            raise InputError(f"PART_NUM and ATTN_NUM must be at least 1 (got {p}, {m})")
        norm = blocks_norm(cfg.MODEL.BACKBONE.NORM)
        backbone = build_split_backbone(cfg, with_hard, with_soft)
        c3, c4 = backbone.layer3_channels, backbone.layer4_channels

        # Modules draw their initial weights from the seed in the order they are built (heads, fusion, then the
        # branches and distillation below): keep it, so that a seed keeps giving the same model.
        heads, head_specs = nn.ModuleDict(), []

        def add_heads(specs):
            for spec in specs:
                heads[spec.name] = MDPRHead(cfg, feat_dim=spec.width, pool_type=spec.pool_type)
            head_specs.extend(specs)

        if with_hard:
            add_heads(HardContentBranch.head_specs(e, p))
        if with_soft:
            add_heads(SoftContentBranch.head_specs(e, m))
        fusion = Fusion(e, norm) if cfg.FUSION_ENABLE and both else None
        if fusion is not None:
            add_heads(Fusion.head_specs(e))

        losses = cfg.MODEL.LOSSES
        return {
            "backbone": backbone,
            "hard_branch": HardContentBranch(c4, e, p, norm) if with_hard else None,
            "soft_branch": SoftContentBranch(c3, c4, e, m, cfg.ATTN_GUIDED, norm) if with_soft else None,
            "fusion": fusion,
            "distillation": MutualDistillation(e) if cfg.DISTILLATION_ENABLE and both else None,
            "heads": heads,
            "head_specs": head_specs,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "loss_kwargs": {
                "names": check_loss_names(cfg),
                "ce": {"eps": losses.CE.EPSILON, "alpha": losses.CE.ALPHA, "scale": losses.CE.SCALE},
                "tri": {"margin": losses.TRI.MARGIN, "norm_feat": losses.TRI.NORM_FEAT,
                        "hard_mining": losses.TRI.HARD_MINING, "scale": losses.TRI.SCALE},
                "diversity": {"enabled": cfg.ATTN_DIVERSITY_LOSS_ENABLE,
                              "sparsity_scale": losses.ATTN_DIVERSITY.SCALE},
            },
            "output_all": cfg.OUTPUT_ALL,
        }

    # ------------------------------------------------------------------------------- loading a state dict
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if self.renames_authors_keys(state_dict, prefix, local_metadata):
            self._leave_out_classifiers_of_another_size(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @staticmethod
    def renames_authors_keys(state_dict, prefix="", local_metadata=None):
        """Rename in place the keys of ``state_dict`` under ``prefix`` from the authors' layout, when the version
        in ``local_metadata`` (this module's entry of the state dict's metadata) is older than this layout's and
        they are in it. Returns whether they were renamed."""
        version = (local_metadata or {}).get("version") or 1
        return version < MDPR._version and convert_authors_keys(state_dict, prefix)

    def _leave_out_classifiers_of_another_size(self, state_dict, prefix):
        """Leave out a classifier sized for another number of identities (fastreid evaluates with
        NUM_CLASSES 0), as fastreid's checkpointer skips one in this model's names: it compares shapes by name
        before loading, while the names are still the authors'. A strict load then reports it missing; the
        eval feature does not use the classifiers."""
        for name, head in self.heads.items():
            key = f"{prefix}heads.{name}.weight"
            if key in state_dict and state_dict[key].shape != head.weight.shape:
                logger.warning("Not loading the classifier %s of the authors' checkpoint: %s identities, the model "
                               "has %s (MODEL.HEADS.NUM_CLASSES)", key, state_dict[key].shape[0], head.weight.shape[0])
                del state_dict[key]

    @property
    def device(self):
        return self.pixel_mean.device

    @property
    def eval_feature_names(self):
        """Heads whose BNNeck outputs make up the eval feature, in order (training-only heads left out)."""
        return [name for name in self.heads if self.head_specs[name].in_eval_feature]

    @property
    def eval_feature_dim(self):
        """Width of the eval feature: E*(P+1) (hard) + 2E (soft) + 4E (fusion); 4608 for E=512, P=2."""
        return sum(self.heads[name].weight.shape[1] for name in self.eval_feature_names)

    def forward(self, batched_inputs):
        images = self.preprocess_image(batched_inputs)
        shared = self.backbone.trunk(images)
        maps = {}  # head name -> the map (or BAP vector) it reads

        # Hard content branch: a global embedding and P horizontal stripes of its own layer4 map.
        if self.hard_branch is not None:
            _, hard4 = self.backbone.hard(shared)
            maps["hard_global"], hard_parts = self.hard_branch(hard4)
            maps.update((f"hard_part_{i}", part) for i, part in enumerate(hard_parts))

        # Soft content branch: attention on its own layer3 / layer4 maps. BAP only feeds training-only heads.
        soft = None
        if self.soft_branch is not None:
            soft = self.soft_branch(*self.backbone.soft(shared),
                                    with_attention=self.output_all, with_bap=self.training)
            maps.update(soft.head_inputs())

        # Fusion of both branches' maps.
        if self.fusion is not None:
            maps["fusion"] = self.fusion(maps["hard_global"], hard_parts, soft.feature4, soft.feature3)

        # Heads: at eval, the eval feature; in training, every head's outputs for the losses.
        if not self.training:
            if self.output_all and soft is not None:
                self.last_attention_maps = {"attention4": soft.attention4, "attention3": soft.attention3}
            return torch.cat([self.heads[name](maps[name]) for name in self.eval_feature_names], dim=1)

        targets = self._targets(batched_inputs)
        outputs = {name: head(maps[name], targets) for name, head in self.heads.items()}
        return self.losses(outputs, soft, targets)

    def preprocess_image(self, batched_inputs):
        """Images (dict ``images`` or a tensor) moved to the model's device and normalised into a new tensor."""
        images = batched_inputs["images"] if isinstance(batched_inputs, dict) else batched_inputs
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"expected a dict with 'images' or a tensor, got {type(batched_inputs).__name__}")
        images = images.to(self.device, non_blocking=True)
        return (images - self.pixel_mean) / self.pixel_std

    def _targets(self, batched_inputs):
        if not isinstance(batched_inputs, dict) or "targets" not in batched_inputs:
            raise ValueError("training needs person IDs: pass {'images': ..., 'targets': ...}")
        targets = batched_inputs["targets"].to(self.device, non_blocking=True)
        # fastreid's PreciseBN hook passes targets of -1; like Baseline, use class 0 then, but without
        # reading the sum back to the host and without changing the caller's tensor.
        return torch.where(targets.sum() < 0, torch.zeros_like(targets), targets)

    def losses(self, outputs, soft, targets):
        """Loss dict from the heads' training outputs and the soft branch's attention / BAP results."""
        ce, tri, diversity = (self.loss_kwargs[k] for k in ("ce", "tri", "diversity"))
        loss_dict = {}
        # Identity losses: those MODEL.LOSSES.NAME names, as each head's HeadSpec takes them.
        for name, out in outputs.items():
            identity_losses = self.head_specs[name].identity_losses(self.loss_kwargs["names"])
            if "CrossEntropyLoss" in identity_losses:
                loss_dict[f"loss_{name}_cls"] = cross_entropy_loss(
                    out["cls_outputs"], targets, ce["eps"], ce["alpha"]) * ce["scale"]
            if "TripletLoss" in identity_losses:
                loss_dict[f"loss_{name}_triplet"] = triplet_loss(
                    out["features"], targets, tri["margin"], tri["norm_feat"], tri["hard_mining"]) * tri["scale"]

        # Diversity and sparsity of the soft branch's attention.
        if soft is not None and diversity["enabled"]:
            for scale, pooled, attention in (("4", soft.pooled4, soft.attention4),
                                             ("3", soft.pooled3, soft.attention3)):
                loss_dict[f"loss_diversity_loss_{scale}"] = attention_diversity_loss(pooled)
                loss_dict[f"loss_diversity_loss_reg_{scale}"] = attention_sparsity_loss(
                    attention, diversity["sparsity_scale"])

        # Mutual distillation between the branches' heads.
        if self.distillation is not None:
            loss_dict["loss_mutual_distillation"] = self.distillation(outputs)

        # fastreid's log_accuracy needs the trainer's EventStorage; outside the trainer there is nothing to log to.
        if events._CURRENT_STORAGE_STACK:
            accuracy_head = next((name for name in outputs if self.head_specs[name].logs_accuracy), next(iter(outputs)))
            log_accuracy(outputs[accuracy_head]["pred_class_logits"].detach(), targets)
        return loss_dict

    def attention_maps(self, batched_inputs, include_background=False):
        """The soft branch's foreground attention for a batch: ``{"attention4", "attention3"}``, each B x M x H x W.

        With ``include_background`` also ``{"background4", "background3"}``, each B x 1 x H x W: the
        softmax channel the model drops, so that foreground + background is 1 at every position.
        Runs in the model's current mode (call it in eval mode, under ``torch.no_grad()`` for inference).
        """
        if self.soft_branch is None:
            raise InputError("SOFT_BRANCH_ENABLE is False: this model has no attention maps")
        x3, x4 = self.backbone.soft(self.backbone.trunk(self.preprocess_image(batched_inputs)))
        attention4, attention3 = self.soft_branch.attention(x3, x4, include_background)
        if not include_background:
            return {"attention4": attention4, "attention3": attention3}
        return {"attention4": attention4[:, :-1], "attention3": attention3[:, :-1],
                "background4": attention4[:, -1:], "background3": attention3[:, -1:]}


def state_dict_as_loaded(model, state_dict):
    """``state_dict`` with its keys renamed as the MDPR modules of ``model`` rename them when loading it (the
    authors' layout), without loading anything: for checks that compare a checkpoint's keys with the model's
    before loading. ``state_dict`` itself when nothing is renamed."""
    metadata = getattr(state_dict, "_metadata", None) or {}
    renamed = dict(state_dict)
    converted = [module.renames_authors_keys(renamed, f"{name}." if name else "", metadata.get(name))
                 for name, module in model.named_modules() if isinstance(module, MDPR)]
    return renamed if any(converted) else state_dict
