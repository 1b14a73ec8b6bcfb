"""A property every tool keeps, checked on the console scripts as a user runs them: bad input of each kind
(missing or corrupt files, bad config keys and values, files of another model, output paths that cannot be
written, numbers out of range) exits with status 1 and exactly one ``<tool>: error: <message>`` line, no
traceback, and leaves every output path as it was. So does a write that fails (a file-size limit here, as a full
disk would): the files written before are byte for byte as they were."""
import csv
import os
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import BUNDLED_IMAGES, MDPR_DEMO_CONFIG, REPO, colour_onnx
from PIL import Image

from mdpr_plugin.tools import search

pytestmark = pytest.mark.slow  # every case runs a console script

BIN = os.path.dirname(sys.executable)  # where pip put the console scripts of this environment
BENCHMARK = "python -m benchmarks.model"  # the repository's own, not installed: found through PYTHONPATH


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
    # a size beyond memory, refused before the model is run or anything drawn
    ("visualize scale too large", "mdpr-visualize attention", ["--config-file", "{config}", "--output-dir", "{out}/23",
                                                              "--test-set", "--scale", "5000", *WEIGHTS],
     "A picture of 1280034 x 1280087 pixels would need", ["{out}/23"]),
    ("visualize output a file", "mdpr-visualize ranking", ["--config-file", "{config}", "--output-dir",
                                                           "{tmp}/a_file", *WEIGHTS],
     "--output-dir {tmp}/a_file is a file; give a folder", ["{tmp}/a_file"]),
    ("benchmark json under a file", BENCHMARK, ["--small", "--config-file", "{config}", "--json",
                                                "{tmp}/a_file/results.json", "--feature-dir", "{out}/19"],
     "--json {tmp}/a_file/results.json cannot be written", ["{tmp}/a_file", "{out}/19"]),
    # anything else found to raise
    ("device unknown", "mdpr-extract", [*EXTRACT, "--output", "{out}/20.npz", "MODEL.WEIGHTS", "{weights}",
                                        "MODEL.DEVICE", "abacus"], "MODEL.DEVICE 'abacus' is not allowed: give cuda",
     ["{out}/20.npz"]),
    ("k2 zero", "mdpr-search", [*QUERY, "--features", "{tmp}/gallery.npz", "--rerank", "--k2", "0"],
     "--k1 and --k2 must be at least 1, got 20 and 0", []),
    ("benchmark results not json", BENCHMARK, ["--from-json", "{tmp}/not.json", "--output", "{out}/22.md",
                                               "--write-docs"], "--from-json {tmp}/not.json is not JSON",
     ["{out}/22.md"]),
]


def state(path):
    """What a path holds: None (nothing), its bytes, or a folder's sorted listing."""
    if os.path.isdir(path):
        return sorted(os.listdir(path))
    return open(path, "rb").read() if os.path.exists(path) else None


def limited(file_size=None, memory=None):
    """A ``preexec_fn`` that limits the child: the size of a file it writes (SIGXFSZ ignored, so that the write
    fails with EFBIG as on a full disk, rather than killing it) and its address space."""
    def apply():
        if file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    return apply


def run_tool(tool, arguments, folder, limits=None, env=None):
    """The console script ``tool`` ("mdpr-visualize ranking": the command after it; "python -m ...": this
    environment's Python) run in ``folder``, not the repository, under ``limits`` (see :func:`limited`), with ``env``
    added to the environment; the repository goes first on PYTHONPATH, before whatever is there."""
    script, *command = tool.split()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
               **(env or {}))
    proc = subprocess.run([os.path.join(BIN, script), *command, *arguments], env=env, cwd=folder,
                          preexec_fn=limits, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc.returncode, proc.stdout


def one_error_line(tool, code, output, message):
    """Assert the refusal: exit status 1, exactly one ``<tool>: error:`` line, holding ``message``, no traceback."""
    errors = [line for line in output.splitlines() if line.startswith(f"{tool}: error: ")]
    assert code == 1, output
    assert len(errors) == 1 and message in errors[0], output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_bad_input_gives_one_error_line_no_traceback_and_leaves_the_outputs(files, case):
    _, tool, arguments, message, outputs = case
    outputs = [path.format(**files) for path in outputs]
    before = {path: state(path) for path in outputs}
    code, output = run_tool(tool, [argument.format(**files) for argument in arguments], files["tmp"])
    one_error_line(tool, code, output, message.format(**files))
    assert {path: state(path) for path in outputs} == before


# ------------------------------------------------------------------------------------------ failed writes
def tree_state(folder):
    """Every file under ``folder`` (relative path -> bytes): what a failed write must leave, temporary files none."""
    return {os.path.relpath(os.path.join(root, name), folder): open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names}


@pytest.fixture(scope="module")
def write_inputs(files):
    """Inputs whose outputs outgrow a small file-size limit: 3000 features (an index of 770 kB, results of 3 MB) and
    two images, black then noise, whose attention pictures are a small and a large PNG."""
    tmp = files["tmp"]
    rng = np.random.default_rng(1)
    np.savez(f"{tmp}/big.npz", features=rng.standard_normal((3000, 64)).astype(np.float32),
             paths=np.array([f"person_{i}.jpg" for i in range(3000)]))
    search.main(["index", "--features", f"{tmp}/big.npz", "--output", f"{tmp}/big.index"])
    os.makedirs(f"{tmp}/two_images")
    Image.fromarray(np.zeros((128, 64, 3), np.uint8)).save(f"{tmp}/two_images/a_black.png")
    Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)).save(f"{tmp}/two_images/b_noise.png")
    return files


# (id, tool, arguments, the file-size limit, the file whose write fails, the files there before)
WRITE_CASES = [
    ("extract", "mdpr-extract", [*EXTRACT, "--output", "{w}/feats.npz", *WEIGHTS], 64 << 10, "{w}/feats.npz",
     ["feats.npz"]),
    ("index", "mdpr-search", ["index", "--features", "{tmp}/big.npz", "--output", "{w}/g.index"], 256 << 10,
     "{w}/g.index", ["g.index", "g.index.json"]),
    ("query csv", "mdpr-search", ["query", "--index", "{tmp}/big.index", "--features", "{tmp}/big.npz", "--topk",
                                  "20", "--output", "{w}/r.csv"], 256 << 10, "{w}/r.csv", ["r.csv"]),
    ("export", "mdpr-export", ["--config-file", "{config}", "--output", "{w}/m.onnx", *WEIGHTS], 1 << 20,
     "{w}/m.onnx", ["m.onnx"]),
    # the black image's picture fits the limit, the noise image's does not: neither old picture may be replaced
    ("attention pictures", "mdpr-visualize attention", ["--config-file", "{config}", "--output-dir", "{w}/vis",
                                                        "--input", "{tmp}/two_images", *WEIGHTS], 24 << 10,
     "{w}/vis/b_noise.png", ["vis/a_black.png", "vis/b_noise.png"]),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", WRITE_CASES, ids=[case[0] for case in WRITE_CASES])
def test_a_failed_write_leaves_the_previous_files_and_gives_one_error_line(write_inputs, tmp_path, case):
    _, tool, arguments, limit, failing, previous = case
    names = dict(write_inputs, w=str(tmp_path))
    for name in previous:
        os.makedirs(os.path.dirname(tmp_path / name), exist_ok=True)
        (tmp_path / name).write_bytes(f"the previous {name}".encode())
    before = tree_state(tmp_path)
    code, output = run_tool(tool, [argument.format(**names) for argument in arguments], write_inputs["tmp"],
                            limits=limited(file_size=limit))
    one_error_line(tool, code, output, f"could not write {failing.format(**names)}: File too large (")
    assert "unchanged); the file system or a file-size limit" in output, output
    assert "raise the limit, or give --output" in output, output
    assert tree_state(tmp_path) == before


def mot_sequence(folder, frames=2):
    """A MOTChallenge-format sequence of ``frames`` 640 x 360 frames, black on the left and noise on the right, with
    one person in each half: the black person's crops are small JPEGs, the noisy one's large."""
    rng = np.random.default_rng(2)
    os.makedirs(folder / "img1")
    os.makedirs(folder / "gt")
    for frame in range(1, frames + 1):
        picture = np.zeros((360, 640, 3), np.uint8)
        picture[:, 320:] = rng.integers(0, 256, (360, 320, 3), dtype=np.uint8)
        Image.fromarray(picture).save(folder / "img1" / f"{frame:06d}.jpg", quality=95)
    (folder / "gt" / "gt.txt").write_text("".join(f"{frame},1,50,50,100,200,1,1,1\n{frame},2,400,50,100,200,1,1,1\n"
                                                  for frame in range(1, frames + 1)))
    return folder


@pytest.mark.slow
def test_a_failed_crop_write_of_mdpr_dataset_keeps_what_was_written_and_a_rerun_resumes(tmp_path):
    """The crops are written one by one (a rerun writes only the missing ones): a failed one leaves no partial file,
    the crops before it as they were, and the same command finishes the dataset once the disk has room."""
    sequence = mot_sequence(tmp_path / "SEQ")
    inputs = tree_state(sequence)
    root = tmp_path / "dataset"
    arguments = ["from-mot", str(sequence), "--output", str(root), "--test-ids", "0", "--every", "1"]
    code, output = run_tool("mdpr-dataset", arguments, str(tmp_path), limits=limited(file_size=16 << 10))
    one_error_line("mdpr-dataset", code, output, f"could not write {root}/train/SEQ_00002/")
    assert ".jpg: File too large (no file was left there); the file system or a file-size limit" in output, output
    assert "raise the limit, or give --output on another file system" in output, output
    first = tree_state(root)
    assert [name for name in first if name.endswith(".jpg")] == ["train/SEQ_00001/000001.jpg"], first
    code, output = run_tool("mdpr-dataset", arguments, str(tmp_path), limits=limited(file_size=16 << 10))
    one_error_line("mdpr-dataset", code, output, f"could not write {root}/train/SEQ_00002/")
    assert tree_state(root) == first  # the same failure again, nothing lost or half written
    code, output = run_tool("mdpr-dataset", arguments, str(tmp_path))
    assert code == 0, output
    finished = tree_state(root)
    assert len([name for name in finished if name.endswith(".jpg")]) == 4, finished
    assert {name: finished[name] for name in first if name.endswith(".jpg")} == {
        name: data for name, data in first.items() if name.endswith(".jpg")}
    assert tree_state(sequence) == inputs


# ------------------------------------------------------------------------------------------ names
# a Latin-1 name (its byte 0xe9 is not UTF-8), a UTF-8 one that ASCII cannot write, and a plain one
NAMES = {os.fsdecode(b"caf\xe9.jpg"): "caf\\xe9.jpg", "\u00e9t\u00e9.jpg": "\u00e9t\u00e9.jpg", "plain.jpg": "plain.jpg"}


@pytest.mark.slow
def test_file_names_that_are_not_utf8_are_written_escaped_in_the_csv_and_on_a_strict_stdout(files, tmp_path):
    """mdpr-search wrote its results, then failed on such a name with a UnicodeEncodeError traceback: in the CSV
    (UTF-8) and on a stdout that is strict (PYTHONIOENCODING, or a UTF-8 locale other than C's)."""
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for name, source in zip(NAMES, sorted(os.listdir(files["images"]))):
        with open(os.path.join(os.fsencode(gallery), os.fsencode(name)), "wb") as f:
            f.write(open(os.path.join(files["images"], source), "rb").read())
    steps = [("mdpr-extract", [*EXTRACT, "--output", f"{tmp_path}/g.npz", *WEIGHTS]),
             ("mdpr-search", ["index", "--features", f"{tmp_path}/g.npz", "--output", f"{tmp_path}/g.index"]),
             ("mdpr-search", ["query", "--index", f"{tmp_path}/g.index", "--features", f"{tmp_path}/g.npz", "--topk",
                              "3", "--output", f"{tmp_path}/r.csv"])]
    for tool, arguments in steps:
        code, output = run_tool(tool, [argument.format(**dict(files, images=str(gallery))) for argument in arguments],
                                str(tmp_path))
        assert code == 0 and "Traceback" not in output, output
    rows = list(csv.reader(open(tmp_path / "r.csv", encoding="utf-8", newline="")))
    assert {row[0] for row in rows[1:]} == {row[2] for row in rows[1:]} == set(NAMES.values()), rows
    query = ["query", "--index", f"{tmp_path}/g.index", "--features", f"{tmp_path}/g.npz", "--topk", "3"]
    on_ascii = {"caf\\xe9.jpg", "\\xe9t\\xe9.jpg", "plain.jpg"}  # what ASCII lacks, escaped too
    for encoding, shown in (("utf-8", set(NAMES.values())), ("ascii:strict", on_ascii)):
        code, output = run_tool("mdpr-search", query, str(tmp_path), env={"PYTHONIOENCODING": encoding})
        assert code == 0 and "Traceback" not in output, output
        assert {line.split()[-1] for line in output.splitlines() if line.startswith("    ")} == shown, output


# ------------------------------------------------------------------------------------------ memory
def address_space_of(module):
    """The address space a fresh interpreter reaches importing ``module`` (torch and its libraries mapped): a
    limit this much above it lets a tool start and refuses it the gigabytes a large input would take."""
    code = (f"import {module}\n"
            "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmPeak')) * 1024)")
    return int(subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, stdout=subprocess.PIPE,
                              text=True).stdout)


HEADROOM = 3 << 29  # 1.5 GiB of address space above the imports


def deflated_zeros_npz(path, rows, dim):
    """An .npz of ``rows`` x ``dim`` float32 zero features (and as many empty paths), deflated: a few MB on disk
    for GBs once read."""
    import zipfile

    chunk = bytes(64 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, dtype, shape in (("features", np.float32, (rows, dim)), ("paths", np.dtype("<U1"), (rows,))):
            with archive.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                         "fortran_order": False, "shape": shape})
                left = int(np.prod(shape)) * np.dtype(dtype).itemsize
                while left:
                    f.write(chunk[:min(left, len(chunk))])
                    left -= min(left, len(chunk))


@pytest.mark.slow
def test_a_features_file_that_inflates_beyond_memory_is_refused_before_it_is_read(files, tmp_path):
    """4 GiB of features deflated into 18 MB: mdpr-search read it whole and failed in numpy's allocator."""
    bomb = tmp_path / "bomb.npz"
    deflated_zeros_npz(bomb, 1 << 20, 1024)
    limit = address_space_of("mdpr_plugin.tools.search") + HEADROOM
    code, output = run_tool("mdpr-search", ["index", "--features", str(bomb), "--output", f"{tmp_path}/b.index"],
                            files["tmp"], limits=limited(memory=limit))
    one_error_line("mdpr-search", code, output, f"{bomb}: its arrays ('features' 1048576 x 1024 float32, 'paths' "
                                                "1048576 <U1) would need 4.0 GiB of memory and ")
    assert "are available; extract the gallery in parts" in output, output
    assert sorted(os.listdir(tmp_path)) == ["bomb.npz"]


@pytest.mark.slow
def test_running_out_of_memory_in_the_model_says_what_to_lower(files, tmp_path):
    """Images of 1536 x 768 in batches of 8: inputs that fit, activations that do not (no check foresees those)."""
    (tmp_path / "feats.npz").write_bytes(b"the previous features")
    limit = address_space_of("mdpr_plugin.tools.extract") + HEADROOM
    arguments = [*EXTRACT, "--output", f"{tmp_path}/feats.npz", "--batch-size", "8", *WEIGHTS, "INPUT.SIZE_TEST",
                 "[1536, 768]"]
    code, output = run_tool("mdpr-extract", [argument.format(**files) for argument in arguments], files["tmp"],
                            limits=limited(memory=limit))
    one_error_line("mdpr-extract", code, output, "Out of memory during feature extraction (")
    assert "; ulimit -v allows this process " in output, output
    assert "available). Lower --batch-size (now 8) or INPUT.SIZE_TEST, or free memory" in output, output
    assert tree_state(tmp_path) == {"feats.npz": b"the previous features"}


@pytest.mark.slow
def test_running_out_of_memory_decoding_a_frame_says_what_to_lower(tmp_path):
    """A frame of 8000 x 8000 pixels (a small JPEG, 256 MB decoded) with little memory to spare: mdpr-dataset ended
    in PIL's MemoryError traceback."""
    sequence = tmp_path / "SEQ"
    os.makedirs(sequence / "img1")
    os.makedirs(sequence / "gt")
    for frame in (1, 2):
        Image.new("RGB", (8000, 8000), (90, 90, 90)).save(sequence / "img1" / f"00000{frame}.jpg")
    (sequence / "gt" / "gt.txt").write_text("".join(f"{frame},{track},{track * 200},50,100,200,1,1,1\n"
                                                    for frame in (1, 2) for track in (1, 2)))
    limit = address_space_of("mdpr_plugin.tools.dataset") + (128 << 20)
    code, output = run_tool("mdpr-dataset", ["from-mot", str(sequence), "--output", f"{tmp_path}/dataset",
                                             "--test-ids", "0", "--every", "1"], str(tmp_path),
                            limits=limited(memory=limit))
    one_error_line("mdpr-dataset", code, output, "Out of memory during mdpr-dataset from-mot (")
    assert "Lower the frames' size (each frame is decoded whole), or free memory" in output, output
    assert sorted(os.listdir(tmp_path / "dataset")) == ["mdpr_dataset.json"]
