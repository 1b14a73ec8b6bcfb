"""A backbone as a chain of modules in forward order, cut where its last two stages begin.

MDPR needs of a backbone a shared trunk, then the paper's layer3 and layer4, which each branch copies. The two
stages are named by the dotted paths of the modules where they begin (``layer3``, ``features.14``). The chain is
found by running the backbone once on a small image and recording the order in which its forward first calls
each module at the depth of those paths (the children of the stages' ancestors); the trunk is what comes before
the first stage, stage 3 runs up to the second, stage 4 to the end. The cut is checked: the trunk and the two
stages, run one after another, must give the backbone's own output, so a forward that computes anything outside
its modules is refused rather than silently changed.
"""
import contextlib
from collections import OrderedDict

import torch
from torch import nn

from ..errors import InputError

PROBE_SIZE = (64, 32)  # small, and still 4x2 maps at stride 16


def how_to_name_stages(backbone, name):
    """The end of every message about stages that cannot be found: what the backbone has and the key to set."""
    top_level = ", ".join(child for child, _ in backbone.named_children()) or "none"
    return (f"The backbone built by MODEL.BACKBONE.NAME={name!r} ({type(backbone).__name__}) has these top-level "
            f"modules, in order: {top_level}. Set MODEL.BACKBONE.BRANCH_STAGES to the two modules "
            "where its last two stages begin (dotted paths reach inside a module, e.g. features.14), e.g. "
            "MODEL.BACKBONE.BRANCH_STAGES \"('layer3', 'layer4')\".")


def probe_image(backbone):
    """A fixed small image on the backbone's device, drawn without touching the global random state."""
    param = next(backbone.parameters())
    image = torch.randn(1, 3, *PROBE_SIZE, generator=torch.Generator().manual_seed(0))
    return image.to(device=param.device, dtype=param.dtype)


@contextlib.contextmanager
def evaluating(*modules):
    """Eval mode and no gradients for a probe, each module's own mode restored after (no running-statistics update)."""
    saved = [(m, m.training) for module in modules for m in module.modules()]
    for m, _ in saved:
        m.training = False
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in saved:
            m.training = mode


def traced_chain(root, stage_paths, run, image):
    """``[(path, module)]``: the children of the stages' ancestors, in the order ``run(image)`` first calls them,
    and ``run``'s output. Children it never calls are left out (a classifier the forward skips)."""
    expanded = {""}
    for path in stage_paths:
        parts = path.split(".")
        expanded.update(".".join(parts[:i]) for i in range(1, len(parts)))
    modules = dict(root.named_modules())
    units = {}
    for parent in expanded:
        for name, child in modules[parent].named_children():
            path = f"{parent}.{name}" if parent else name
            if path not in expanded:
                units[path] = child
    called = []
    hooks = [module.register_forward_pre_hook(lambda _module, _args, path=path: called.append(path))
             for path, module in units.items()]
    try:
        output = run(image)
    finally:
        for hook in hooks:
            hook.remove()
    return [(path, units[path]) for path in dict.fromkeys(called)], output


def cut(chain, stage_paths, describe):
    """The chain cut at the two stages' first modules: (trunk, stage 3, stage 4), each a list of (path, module)."""
    paths = [path for path, _ in chain]
    for stage in stage_paths:
        if stage not in paths:
            raise InputError(f"The backbone's forward never calls {stage!r} as a module, so MDPR cannot cut it "
                             f"there. {describe}")
    first, second = (paths.index(stage) for stage in stage_paths)
    if first >= second:
        raise InputError(f"The backbone's forward runs {stage_paths[1]!r} before {stage_paths[0]!r}: name the "
                         f"earlier stage first. {describe}")
    return chain[:first], chain[first:second], chain[second:]


def as_sequential(chain):
    """Modules named by dotted paths, as nested Sequentials under the same names (hence the same state-dict keys)."""
    groups = OrderedDict()
    for path, module in chain:
        head, _, rest = path.partition(".")
        groups.setdefault(head, []).append((rest, module))
    return nn.Sequential(OrderedDict(
        (head, items[0][1] if items[0][0] == "" else as_sequential(items)) for head, items in groups.items()))


def as_stage(chain):
    """A stage of one module is that module (so ``layer3``'s keys stay ``layer3.0...``); several, a Sequential."""
    return chain[0][1] if len(chain) == 1 else as_sequential(chain)


def check_same_output(expected, pieces, image, what):
    """Run ``pieces`` one after another on ``image``; refuse unless that gives ``expected``. Returns each output."""
    outputs, x = [], image
    for piece in pieces:
        x = piece(x)
        outputs.append(x)
    if not torch.is_tensor(expected) or expected.dim() != 4:
        returned = tuple(expected.shape) if torch.is_tensor(expected) else type(expected).__name__
        raise InputError(f"{what} returns {returned}, not a B x C x H x W feature map as fastreid's backbones do.")
    same = x.shape == expected.shape
    if same and x.device.type != "meta":  # meta tensors: shapes only
        # Loose enough for another kernel choice, far tighter than anything a lost operation changes.
        same = torch.allclose(x, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))
    if not same:
        raise InputError(
            f"{what} is not a plain chain of its modules: running them one after another does not give its output, "
            "so its forward computes something outside them (a functional operation, a module called twice). MDPR "
            "copies the stages as modules and would lose that. Register a backbone whose forward only calls its "
            "modules one after another.")
    return outputs
