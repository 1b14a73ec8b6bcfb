"""Shared test helpers (tests/ is on sys.path through pytest.ini)."""
import contextlib
import logging
import os
import re
import subprocess
import sys

from mdpr_plugin.config import build_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MDPR_DEMO_CONFIG = os.path.join(REPO, "configs", "MDPR", "demo.yml")
BUNDLED_IMAGES = os.path.join(REPO, "mdpr_plugin", "data", "mini_market1501", "Market-1501-v15.09.15")


def doc_text(page):
    """The text of a documentation page, named from the repository root (``README.md``, ``docs/tools.md``)."""
    with open(os.path.join(REPO, page)) as f:
        return f.read()


def code_after_marker(page, marker, language="python"):
    """The ```language block right after the line ``marker`` in ``page``: the example a test runs as written."""
    lines = doc_text(page).splitlines()
    assert marker in lines, f"{page} has no line {marker!r}"
    rest = lines[lines.index(marker) + 1:]
    assert rest and rest[0] == "```" + language, f"in {page}, the line after {marker!r} must open a ```{language} block"
    assert "```" in rest[1:], f"in {page}, the block after {marker!r} is not closed"
    return "\n".join(rest[1:rest.index("```", 1)]) + "\n"


def code_blocks(page, language="bash"):
    """Every ```language block of ``page``, in order, as one text."""
    return "\n".join(re.findall(rf"^```{language}\n(.*?)^```", doc_text(page), flags=re.S | re.M))


def load_config(path, *overrides):
    """A config as train_net.py builds it (without the logging / output-dir side effects)."""
    return build_config(os.path.join(REPO, path), overrides)


def run_script(*args, cwd=REPO, timeout=600, env=None, limits=None, before=None):
    """Run Python in a fresh interpreter (from the repository root, with ``env`` added to the environment and the
    resource ``limits`` {resource.RLIMIT_*: limit} set in it, soft and hard, as ``ulimit`` sets them; ``before``, a
    function, run in the new process before Python starts there); return (returncode, output)."""
    import resource

    def set_limits():
        for kind, limit in (limits or {}).items():
            resource.setrlimit(kind, (limit, limit))
        if before is not None:
            before()

    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, timeout=timeout, preexec_fn=set_limits,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc.returncode, proc.stdout


@contextlib.contextmanager
def logged(logger_name="mdpr_plugin", level=logging.WARNING):
    """The messages of ``level`` and above logged on ``logger_name`` and its children, caught on the logger
    itself (pytest's caplog listens on the root logger, which fastreid's setup_logger stops them reaching)."""
    messages = []
    handler = logging.Handler(level)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger(logger_name)
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def save_demo_checkpoint(folder, name="model_final"):
    """A checkpoint of configs/MDPR/demo.yml, untrained but with BN statistics moved away from their defaults (a
    fresh model's 0 / 1 would make eval-mode BN the identity); returns its path, ``folder/name.pth``."""
    import torch
    from fastreid.modeling import build_model
    from fastreid.utils.checkpoint import Checkpointer

    torch.manual_seed(0)
    model = build_model(load_config("configs/MDPR/demo.yml", "MODEL.BACKBONE.PRETRAIN", "False", "MODEL.DEVICE", "cpu"))
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    os.makedirs(folder, exist_ok=True)
    Checkpointer(model, save_dir=str(folder)).save(name)
    return os.path.join(str(folder), name + ".pth")


def market1501_copy(root):
    """A copy of the bundled images laid out as fastreid's Market1501 data set under ``root`` (point
    ``fastreid.data.build._root`` at ``root`` to evaluate on it); returns the copy's folder."""
    import shutil

    folder = os.path.join(str(root), "Market-1501-v15.09.15")
    shutil.copytree(BUNDLED_IMAGES, folder)
    return folder


def evaluation_features(cfg, dataset_name):
    """``{image path: feature}`` as ``train_net.py --eval-only`` computes them for ``dataset_name``'s query and
    gallery images: its model, test loader and inference (TEST.FLIP included), the evaluator's features
    L2-normalised (as its cosine distance normalises them)."""
    import torch.nn.functional as F

    from mdpr_plugin.engine import Trainer, build_eval_model
    from mdpr_plugin.evaluation import ReidEvaluator, inference_on_dataset

    class FeaturesOnly(ReidEvaluator):
        def evaluate(self):
            return None

    model, cfg = build_eval_model(cfg, build=Trainer.build_model)
    loader, num_query = Trainer.build_test_loader(cfg, dataset_name)
    evaluator = FeaturesOnly(cfg, num_query)
    inference_on_dataset(model, loader, evaluator, flip_test=cfg.TEST.FLIP.ENABLED)
    features, _, _ = evaluator._features()
    paths = [item[0] for item in loader.dataset.img_items]
    return dict(zip(paths, F.normalize(features, dim=1).numpy()))


def bundled_test_images(cfg, count):
    """The first ``count`` bundled images as the evaluation feeds them: B x 3 x H x W, 0-255 RGB, INPUT.SIZE_TEST."""
    import torch

    from mdpr_plugin.data import build_transforms, read_image
    from mdpr_plugin.tools.common import list_images

    transform = build_transforms(cfg, is_train=False)
    return torch.stack([transform(read_image(path)) for path in list_images(BUNDLED_IMAGES)[:count]])


def colour_onnx(path, repeats=1, symbolic_width=False):
    """A small ONNX graph with mdpr-export's interface at the demo's input size (``images`` B x 3 x 128 x 64 in,
    ``features`` out) whose features are the image's mean colour repeated ``repeats`` times: 3 x ``repeats``
    wide, declared so or, with ``symbolic_width``, as a named axis. Returns the path."""
    import onnx
    from onnx import TensorProto, helper

    tiles = helper.make_tensor("tiles", TensorProto.INT64, [2], [1, repeats])
    nodes = [helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["colour"]),
             helper.make_node("Tile", ["colour", "tiles"], ["features"])]
    width = "width" if symbolic_width else 3 * repeats
    graph = helper.make_graph(nodes, "colour", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                              ["batch", 3, 128, 64])],
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", width])],
                              initializer=[tiles])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return str(path)


SYNERGYREID_SPLITS = {"bounding_box_train": "reid_training", "query": "reid_test/query",
                      "bounding_box_test": "reid_test/gallery"}


def synergyreid_copy(root):
    """The bundled images laid out as SynergyReID under ``root`` (``root/synergyreid_data/reid_training/`` etc.), each
    named ``<person id>_<camera>_<number>.jpeg`` after its Market-1501 name; returns ``{copy's path: Market-1501
    person id}``."""
    import re
    import shutil

    ids = {}
    for market_split, split in SYNERGYREID_SPLITS.items():
        folder = os.path.join(str(root), "synergyreid_data", split)
        os.makedirs(folder)
        for number, name in enumerate(sorted(os.listdir(os.path.join(BUNDLED_IMAGES, market_split)))):
            pid, camera = re.match(r"(\d+)_c(\d)", name).groups()
            path = os.path.join(folder, f"{int(pid)}_{camera}_{number:03d}.jpeg")
            shutil.copyfile(os.path.join(BUNDLED_IMAGES, market_split, name), path)
            ids[path] = int(pid)
    return ids
