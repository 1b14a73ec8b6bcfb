"""A property every tool keeps, checked on the console scripts as a user runs them: bad input of each kind
(missing or corrupt files, bad config keys and values, files of another model, output paths that cannot be
written, numbers out of range) exits with status 1 and exactly one ``<tool>: error: <message>`` line, no
traceback, and leaves every output path as it was."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import BUNDLED_IMAGES, MDPR_DEMO_CONFIG, REPO, colour_onnx

from mdpr_plugin.tools import search

pytestmark = pytest.mark.slow  # every case runs a console script

BIN = os.path.dirname(sys.executable)  # where pip put the console scripts of this environment


@pytest.fixture(scope="module")
def files(tmp_path_factory, demo_weights):
    """The inputs and outputs the cases name, by the names they use in their arguments."""
    tmp = tmp_path_factory.mktemp("bad_input")
    legacy = tmp / "legacy.pth"
    torch.save({"model": {"w": torch.arange(8.0)}}, legacy, _use_new_zipfile_serialization=False)
    (tmp / "cut_legacy.pth").write_bytes(legacy.read_bytes()[:18])  # struct.error in torch's reader
    (tmp / "text.pth").write_text("hello\n")  # KeyError in torch's reader
    (tmp / "text.onnx").write_text("not a model\n")
    other = colour_onnx(tmp / "other.onnx")  # 3-d features: another model than the demo's 1152-d one
    (tmp / "cut.onnx").write_bytes(open(other, "rb").read()[:40])
    features = np.random.default_rng(0).standard_normal((6, 8)).astype(np.float32)
    paths = np.array([f"person_{i}.jpg" for i in range(6)])
    np.savez(tmp / "gallery.npz", features=features, paths=paths)
    features[2] = 0
    np.savez(tmp / "zero.npz", features=features, paths=paths)
    search.main(["index", "--features", str(tmp / "gallery.npz"), "--output", str(tmp / "gallery.index")])
    (tmp / "not.json").write_text("{results: none")
    (tmp / "a_folder").mkdir()
    (tmp / "a_file").write_text("kept")
    (tmp / "out").mkdir()
    return {"tmp": str(tmp), "weights": demo_weights, "config": MDPR_DEMO_CONFIG, "images": BUNDLED_IMAGES + "/query",
            "out": str(tmp / "out")}


EXTRACT = ["--config-file", "{config}", "--input", "{images}"]
WEIGHTS = ["MODEL.WEIGHTS", "{weights}", "MODEL.DEVICE", "cpu"]
QUERY = ["query", "--index", "{tmp}/gallery.index"]
# (id, tool, arguments, what the error line says, the output paths the case must leave as they were)
CASES = [
    # what was already refused in one line
    ("config missing", "mdpr-extract", ["--config-file", "{tmp}/nowhere.yml", "--input", "{images}", "--output",
                                        "{out}/1.npz"], "Config file {tmp}/nowhere.yml not found", ["{out}/1.npz"]),
    ("config key unknown", "mdpr-extract", [*EXTRACT, "--output", "{out}/2.npz", *WEIGHTS, "MODEL.BACKBONE.DEPHT",
                                            "50x"], "Unknown config key MODEL.BACKBONE.DEPHT", ["{out}/2.npz"]),
    ("weights missing", "mdpr-export", ["--config-file", "{config}", "--output", "{out}/3.onnx", "MODEL.WEIGHTS",
                                        "{tmp}/none.pth"], "Checkpoint {tmp}/none.pth not found", ["{out}/3.onnx"]),
    ("features missing", "mdpr-search", ["index", "--features", "{tmp}/none.npz", "--output", "{out}/4.index"],
     "features file {tmp}/none.npz does not exist", ["{out}/4.index", "{out}/4.index.json"]),
    ("input missing", "mdpr-visualize attention", ["--config-file", "{config}", "--output-dir", "{out}/5",
                                                   "--input", "{tmp}/none", *WEIGHTS],
     "--input {tmp}/none is neither an image file nor a folder", ["{out}/5"]),
    # a corrupt checkpoint or ONNX file
    ("checkpoint text", "mdpr-extract", [*EXTRACT, "--output", "{out}/6.npz", "MODEL.WEIGHTS", "{tmp}/text.pth"],
     "{tmp}/text.pth could not be read as a torch checkpoint", ["{out}/6.npz"]),
    ("checkpoint legacy cut", "mdpr-visualize ranking", ["--config-file", "{config}", "--output-dir", "{out}/7",
                                                         "MODEL.WEIGHTS", "{tmp}/cut_legacy.pth"],
     "{tmp}/cut_legacy.pth could not be read as a torch checkpoint", ["{out}/7"]),
    ("onnx text", "mdpr-extract", [*EXTRACT, "--output", "{out}/8.npz", "--onnx", "{tmp}/text.onnx"],
     "{tmp}/text.onnx could not be loaded as an ONNX model", ["{out}/8.npz"]),
    ("onnx cut", "mdpr-search", [*QUERY, "--images", "{images}", "--config-file", "{config}", "--onnx",
                                 "{tmp}/cut.onnx", "--output", "{out}/9.csv"],
     "{tmp}/cut.onnx could not be loaded as an ONNX model", ["{out}/9.csv"]),
    # silent wrong answers
    ("onnx of another model", "mdpr-extract", [*EXTRACT, "--output", "{out}/10.npz", "--onnx", "{tmp}/other.onnx"],
     "{tmp}/other.onnx gives 3-d features but the config's model (MDPR) gives 1152-d", ["{out}/10.npz"]),
    ("zero feature row", "mdpr-search", ["index", "--features", "{tmp}/zero.npz", "--output", "{out}/11.index"],
     "1 of 6 feature rows are all zero", ["{out}/11.index", "{out}/11.index.json"]),
    ("lambda above 1", "mdpr-search", [*QUERY, "--features", "{tmp}/gallery.npz", "--rerank", "--lambda", "2",
                                       "--output", "{out}/12.csv"],
     "--lambda is the weight of the original distance, from 0 to 1; got 2.0", ["{out}/12.csv"]),
    ("opset too old", "mdpr-export", ["--config-file", "{config}", "--output", "{out}/13.onnx", "--opset", "3",
                                      *WEIGHTS], "--opset 3 cannot be written", ["{out}/13.onnx"]),
    # output paths that cannot be written, found before the work
    ("extract output a folder", "mdpr-extract", [*EXTRACT, "--output", "{tmp}/a_folder", *WEIGHTS],
     "--output {tmp}/a_folder is a folder", ["{tmp}/a_folder"]),
    ("export output under a file", "mdpr-export", ["--config-file", "{config}", "--output", "{tmp}/a_file/m.onnx",
                                                   *WEIGHTS], "{tmp}/a_file is a file, not a folder", ["{tmp}/a_file"]),
    ("index output a folder", "mdpr-search", ["index", "--features", "{tmp}/gallery.npz", "--output",
                                              "{tmp}/a_folder"], "--output {tmp}/a_folder is a folder",
     ["{tmp}/a_folder", "{tmp}/a_folder.json"]),
    ("query output uncreatable", "mdpr-search", [*QUERY, "--images", "{images}", "--config-file", "{config}",
                                                 "--output", "/proc/mdpr-results.csv", *WEIGHTS],
     "--output /proc/mdpr-results.csv cannot be written: no file can be created in /proc", []),
    ("visualize output a file", "mdpr-visualize ranking", ["--config-file", "{config}", "--output-dir",
                                                           "{tmp}/a_file", *WEIGHTS],
     "--output-dir {tmp}/a_file is a file; give a folder", ["{tmp}/a_file"]),
    ("benchmark json under a file", "mdpr-benchmark", ["--small", "--config-file", "{config}", "--json",
                                                       "{tmp}/a_file/results.json", "--feature-dir", "{out}/19"],
     "--json {tmp}/a_file/results.json cannot be written", ["{tmp}/a_file", "{out}/19"]),
    # anything else found to raise
    ("device unknown", "mdpr-extract", [*EXTRACT, "--output", "{out}/20.npz", "MODEL.WEIGHTS", "{weights}",
                                        "MODEL.DEVICE", "abacus"], "MODEL.DEVICE 'abacus' is not allowed: give cuda",
     ["{out}/20.npz"]),
    ("k2 zero", "mdpr-search", [*QUERY, "--features", "{tmp}/gallery.npz", "--rerank", "--k2", "0"],
     "--k1 and --k2 must be at least 1, got 20 and 0", []),
    ("benchmark results not json", "mdpr-benchmark", ["--from-json", "{tmp}/not.json", "--output", "{out}/22.md",
                                                      "--write-docs"], "--from-json {tmp}/not.json is not JSON",
     ["{out}/22.md"]),
]


def state(path):
    """What a path holds: None (nothing), its bytes, or a folder's sorted listing."""
    if os.path.isdir(path):
        return sorted(os.listdir(path))
    return open(path, "rb").read() if os.path.exists(path) else None


def run_tool(tool, arguments, folder):
    """The console script ``tool`` ("mdpr-visualize ranking": the command after it) run in ``folder``, not the
    repository; the repository goes first on PYTHONPATH, before whatever is there."""
    script, *command = tool.split()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([os.path.join(BIN, script), *command, *arguments], env=env, cwd=folder,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc.returncode, proc.stdout


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_bad_input_gives_one_error_line_no_traceback_and_leaves_the_outputs(files, case):
    _, tool, arguments, message, outputs = case
    outputs = [path.format(**files) for path in outputs]
    before = {path: state(path) for path in outputs}
    code, output = run_tool(tool, [argument.format(**files) for argument in arguments], files["tmp"])
    errors = [line for line in output.splitlines() if line.startswith(f"{tool}: error: ")]
    assert code == 1, output
    assert len(errors) == 1 and message.format(**files) in errors[0], output
    assert "Traceback" not in output, output
    assert {path: state(path) for path in outputs} == before
