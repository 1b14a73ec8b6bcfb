"""mdpr-extract and mdpr-search: both backends agree; a query in the gallery finds itself first; IVF recall; bad
input (non-finite features, a .npy file, weights of another model) stopped with one line."""
import csv
import os
import shutil

import numpy as np
import pytest
import torch
from fastreid.utils.checkpoint import Checkpointer
from helpers import (BUNDLED_IMAGES, MDPR_DEMO_CONFIG, evaluation_features, load_config, logged, market1501_copy,
                     run_script)
from PIL import Image

from mdpr_plugin import FeatureExtractor
from mdpr_plugin.data import read_image
from mdpr_plugin.engine import build_model
from mdpr_plugin.tools import extract, search

IVF_RECALL_FLOOR = 0.9  # measured 0.933 (20k x 256, 1000 clusters, nlist 64, nprobe 8)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """12 real crops in nested folders; one saved as a PNG at twice the size (resized at test time)."""
    root = tmp_path_factory.mktemp("images")
    sources = sorted(os.listdir(os.path.join(BUNDLED_IMAGES, "query")))[:6]
    for name in sources[:5]:
        shutil.copy(os.path.join(BUNDLED_IMAGES, "query", name), root / name)
    (root / "nested" / "deeper").mkdir(parents=True)
    for name in sorted(os.listdir(os.path.join(BUNDLED_IMAGES, "bounding_box_test")))[:6]:
        shutil.copy(os.path.join(BUNDLED_IMAGES, "bounding_box_test", name), root / "nested" / "deeper" / name)
    image = Image.open(os.path.join(BUNDLED_IMAGES, "query", sources[5]))
    image.resize((image.width * 2, image.height * 2)).save(root / "nested" / "big.png")
    (root / "notes.txt").write_text("not an image")
    return str(root)


@pytest.fixture(scope="module")
def demo_cfg_with_weights(demo_weights):
    return load_config("configs/MDPR/demo.yml", "MODEL.WEIGHTS", demo_weights, "MODEL.DEVICE", "cpu",
                       "MODEL.BACKBONE.PRETRAIN", "False")


@pytest.fixture(scope="module")
def demo_extractor(demo_cfg_with_weights):
    return FeatureExtractor(demo_cfg_with_weights)


@pytest.fixture(scope="module")
def gallery_npz(demo_weights, image_folder, tmp_path_factory):
    """Features of ``image_folder`` written by the mdpr-extract CLI (torch backend)."""
    path = str(tmp_path_factory.mktemp("features") / "gallery.npz")
    code, output = run_script("-m", "mdpr_plugin.tools.extract", "--config-file", MDPR_DEMO_CONFIG, "--input",
                              image_folder, "--output", path, "--batch-size", "5",
                              "MODEL.WEIGHTS", demo_weights, "MODEL.DEVICE", "cpu")
    assert code == 0, output
    assert "12 images, 1152-d features (torch backend" in output
    assert "extracting features (torch): done" in output  # the progress lines
    return path


@pytest.mark.slow
def test_extract_file_format(gallery_npz, image_folder, demo_weights):
    record = extract.load_features(gallery_npz)
    assert record["features"].shape == (12, 1152) and record["features"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(record["features"], axis=1), 1, atol=1e-5)
    assert record["paths"][:3] == sorted(os.listdir(os.path.join(BUNDLED_IMAGES, "query")))[:3]
    assert "nested/big.png" in record["paths"] and "notes.txt" not in record["paths"]
    assert record["root"] == os.path.abspath(image_folder)
    assert (record["backend"], record["model"], record["feature_dim"]) == ("torch", demo_weights, 1152)
    assert record["config_file"] == MDPR_DEMO_CONFIG and list(record["image_size"]) == [128, 64]


@pytest.mark.slow
def test_torch_and_onnx_backends_agree(demo_cfg_with_weights, demo_onnx, image_folder):
    cfg = demo_cfg_with_weights
    records = [extract.extract_folder(image_folder, extract.build_extractor(cfg, backend, demo_onnx[0], batch_size=7))
               for backend in ("torch", "onnx")]
    assert records[0]["paths"] == records[1]["paths"]
    difference = np.abs(records[0]["features"] - records[1]["features"]).max()
    print(f"torch vs onnx features (unit rows): max abs diff {difference:.3g}")
    assert difference < 1e-5
    assert records[1]["backend"] == "onnx" and records[1]["model"] == demo_onnx[0]


@pytest.mark.slow
@pytest.mark.parametrize("flip", [False, True])
def test_the_extractor_s_onnx_backend_gives_pytorch_s_features(demo_weights, demo_onnx, image_folder, flip):
    """Paths, and the boxes of a frame (one beyond its edge), within 1e-4 relative of PyTorch, flip test included."""
    opts = ["MODEL.DEVICE", "cpu", "TEST.FLIP.ENABLED", str(flip)]
    torch_backend = FeatureExtractor(MDPR_DEMO_CONFIG, demo_weights, batch_size=5, opts=opts)
    onnx_backend = FeatureExtractor(MDPR_DEMO_CONFIG, onnx=demo_onnx[0], batch_size=5, opts=opts)
    assert (onnx_backend.backend, onnx_backend.model, onnx_backend.flip) == ("onnx", None, flip)
    paths = extract.list_images(image_folder)
    frame = np.random.default_rng(0).integers(0, 256, (240, 360, 3), dtype=np.uint8)
    frame[20:148, 10:74] = np.asarray(Image.open(paths[0]).convert("RGB"))
    boxes = [(10, 20, 74, 148), (300.5, 100.2, 400.0, 260.0), (100.3, 5.9, 180.2, 230.0)]
    for what, features in (("paths", lambda e: e(paths)), ("crops", lambda e: e.crops(frame, boxes, bgr=True))):
        reference, onnx_features = features(torch_backend), features(onnx_backend)
        relative = np.abs(onnx_features - reference).max() / np.abs(reference).max()
        print(f"{what}, flip {flip}: onnx vs torch max rel diff {relative:.3g}")
        assert onnx_features.shape == reference.shape and relative < 1e-4


def rank_one(rows):
    """{query: (gallery at rank 1, distance)} from result rows."""
    return {row[0]: (row[2], float(row[3])) for row in rows if int(row[1]) == 1}


@pytest.mark.slow
def test_each_query_finds_itself_first(gallery_npz, tmp_path, capsys):
    index = str(tmp_path / "gallery.index")
    search.main(["index", "--features", gallery_npz, "--output", index])
    assert "12 gallery features of dim 1152, exact" in capsys.readouterr().out

    results = str(tmp_path / "results.csv")
    search.main(["query", "--index", index, "--features", gallery_npz, "--topk", "3", "--output", results])
    with open(results) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["query", "rank", "gallery", "distance"] and len(rows) == 1 + 12 * 3
    first = rank_one(rows[1:])
    assert len(first) == 12
    for query, (gallery, distance) in first.items():
        assert gallery == query and distance < 1e-5

    search.main(["query", "--index", index, "--features", gallery_npz, "--topk", "2"])  # printed
    printed = capsys.readouterr().out
    assert "nested/big.png\n    1  0.0000  nested/big.png" in printed


@pytest.mark.slow
def test_reranked_and_image_queries_find_themselves(gallery_npz, demo_onnx, image_folder, tmp_path):
    index = str(tmp_path / "gallery.index")
    search.main(["index", "--features", gallery_npz, "--output", index])
    args = search.parse_args(["query", "--index", index, "--features", gallery_npz, "--topk", "12",
                              "--rerank", "--k1", "5", "--k2", "2"])
    rows = search.command_query(args)
    for query, (gallery, _) in rank_one(rows).items():
        assert gallery == query
    distances = [row[3] for row in rows if row[0] == rows[0][0]]
    assert distances == sorted(distances) and len(distances) == 12

    # query images extracted on the fly with the ONNX model, searched in the torch-extracted gallery
    args = search.parse_args(["query", "--index", index, "--images", image_folder, "--config-file", MDPR_DEMO_CONFIG,
                              "--onnx", demo_onnx[0], "--topk", "1"])
    first = rank_one(search.command_query(args))
    assert len(first) == 12 and all(gallery == query for query, (gallery, _) in first.items())


def clustered_features(count=20000, dim=256, clusters=1000, noise=1.0, seed=0):
    """Gaussian clusters of about 20 points: the k nearest of a point are mostly its cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    return centres[rng.integers(0, clusters, count)] + noise * rng.standard_normal((count, dim)).astype(np.float32)


def test_ivf_recall_against_exact_search():
    features = clustered_features()
    ivf = search.build_index(features, nlist=64, nprobe=8)
    recall = search.ivf_recall(ivf, features)
    print(f"IVF64 nprobe 8 recall@10 vs exact on 20000 x 256 clustered features: {recall:.4f}")
    assert recall >= IVF_RECALL_FLOOR
    ivf.nprobe = 1
    assert search.ivf_recall(ivf, features) < recall  # the measure sees an approximate search
    assert search.ivf_recall(search.build_index(features), features) == 1.0


@pytest.mark.slow
def test_ivf_index_cli_prints_recall_and_keeps_paths(gallery_npz, tmp_path, capsys):
    index = str(tmp_path / "ivf.index")
    search.main(["index", "--features", gallery_npz, "--output", index, "--ivf", "2", "--nprobe", "2"])
    out = capsys.readouterr().out
    assert "IVF, 2 lists, nprobe 2" in out and "IVF recall@10 vs exact search: 1.0000" in out
    loaded, meta = search.load_index(index)
    assert meta["paths"] == extract.load_features(gallery_npz)["paths"] and meta["recall_at_10"] == 1.0
    # all lists probed: IVF-Flat stores exact vectors, so re-ranking can read them back
    np.testing.assert_allclose(search.gallery_vectors(loaded), extract.load_features(gallery_npz)["features"],
                               atol=1e-6)


# ------------------------------------------------------------------------------------------ bad input
def test_empty_folder(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(SystemExit, match=r"mdpr-extract: error: no \.jpg/\.jpeg/\.png images under .*empty"):
        extract.main(["--config-file", MDPR_DEMO_CONFIG, "--input", str(tmp_path / "empty"),
                      "--output", str(tmp_path / "f.npz"), "MODEL.WEIGHTS", "unused.pth"])


def test_image_files_the_tools_do_not_read_are_counted(image_folder, tmp_path):
    shutil.copytree(image_folder, tmp_path / "images")
    for name, suffix in (("a", ".bmp"), ("b", ".webp"), ("c", ".BMP")):
        Image.new("RGB", (64, 128)).save(tmp_path / "images" / "nested" / (name + suffix))
    with logged("mdpr_plugin.tools") as warnings:
        paths = extract.list_images(str(tmp_path / "images"))
    assert len(paths) == 12  # notes.txt is no image: not counted
    assert warnings == [f"Left out 3 image files under {tmp_path / 'images'} that are not .jpg/.jpeg/.png (1 .BMP, "
                        f"1 .bmp, 1 .webp; e.g. {tmp_path / 'images' / 'nested' / 'a.bmp'}): convert them to one of "
                        "those to use them."]


def test_a_file_given_as_the_image_folder_is_named(tmp_path):
    (tmp_path / "one.jpg").write_bytes(b"")
    with pytest.raises(SystemExit, match=rf"^mdpr-extract: error: {tmp_path / 'one.jpg'} is a file; give the folder"):
        extract.main(["--config-file", MDPR_DEMO_CONFIG, "--input", str(tmp_path / "one.jpg"),
                      "--output", str(tmp_path / "f.npz"), "MODEL.WEIGHTS", "unused.pth"])


def test_a_model_device_torch_does_not_know_is_named():
    from mdpr_plugin.devices import resolve_device

    with pytest.raises(ValueError, match=r"^MODEL.DEVICE 'abacus' is not allowed: give cuda \(the first GPU; cuda:N for another\) or cpu"):
        resolve_device("abacus")


def test_missing_weights(image_folder, tmp_path):
    with pytest.raises(SystemExit, match=r"Checkpoint .*missing\.pth not found .*Check MODEL.WEIGHTS"):
        extract.main(["--config-file", MDPR_DEMO_CONFIG, "--input", image_folder, "--output", str(tmp_path / "f.npz"),
                      "MODEL.WEIGHTS", str(tmp_path / "missing.pth")])


def test_unreadable_image_is_named(tmp_path, demo_extractor):
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"broken\.jpg could not be read as an image"):
        extract.extract_features([str(tmp_path / "broken.jpg")], demo_extractor)


def test_features_file_without_features(tmp_path):
    np.savez(tmp_path / "bad.npz", paths=np.array(["a.jpg"]))
    with pytest.raises(SystemExit, match=r"bad\.npz has no 'features' array .*make it with mdpr-extract"):
        search.main(["index", "--features", str(tmp_path / "bad.npz"), "--output", str(tmp_path / "i.index")])
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match=r"text\.npz is not an \.npz of features"):
        extract.load_features(str(tmp_path / "text.npz"))
    with pytest.raises(FileNotFoundError, match=r"absent\.npz does not exist"):
        extract.load_features(str(tmp_path / "absent.npz"))


@pytest.mark.slow
def test_query_mistakes(gallery_npz, tmp_path):
    index = str(tmp_path / "gallery.index")
    search.main(["index", "--features", gallery_npz, "--output", index])
    other = tmp_path / "other.npz"
    np.savez(other, features=np.ones((2, 8), np.float32), paths=np.array(["a.jpg", "b.jpg"]))
    with pytest.raises(SystemExit, match=r"query features are 8-d but the index holds 1152-d"):
        search.main(["query", "--index", index, "--features", str(other)])
    with pytest.raises(SystemExit, match=r"exactly one of --features FILE.npz and --images FOLDER"):
        search.main(["query", "--index", index])
    with pytest.raises(SystemExit, match=r"--images needs --config-file"):
        search.main(["query", "--index", index, "--images", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"--nprobe applies to IVF indexes"):
        search.main(["query", "--index", index, "--features", gallery_npz, "--nprobe", "4"])
    with pytest.raises(SystemExit, match=r"--k1 24 needs more than 24 query \+ gallery images, got 24"):
        search.main(["query", "--index", index, "--features", gallery_npz, "--rerank", "--k1", "24"])
    with pytest.raises(SystemExit, match=r"--ivf 64 needs at least 64 gallery features"):
        search.main(["index", "--features", gallery_npz, "--output", index, "--ivf", "64"])
    with pytest.raises(SystemExit, match=r"missing\.index does not exist.*mdpr-search index"):
        search.main(["query", "--index", str(tmp_path / "missing.index"), "--features", gallery_npz])


@pytest.mark.slow
def test_extract_gives_the_features_eval_only_computes_for_every_kind_of_image(demo_cfg_with_weights, tmp_path,
                                                                            monkeypatch):
    """The same reader and resizing in mdpr-extract as in train_net.py --eval-only: an EXIF-rotated JPEG, a
    palette PNG and a 16-bit grey PNG (both under .jpg names, as a dataset folder may hold them) too."""
    import fastreid.data.build as data_build

    market = market1501_copy(tmp_path)
    query = sorted(os.path.join(market, "query", name) for name in os.listdir(os.path.join(market, "query")))
    rgb = Image.open(query[0]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rgb.transpose(Image.Transpose.ROTATE_90).save(query[0], format="JPEG", exif=exif.tobytes())
    Image.open(query[1]).convert("RGB").quantize(64).save(query[1], format="PNG")
    grey16 = (np.asarray(Image.open(query[2]).convert("L")).astype(np.uint16) * 257)
    Image.fromarray(grey16).save(query[2], format="PNG")
    assert [Image.open(p).mode for p in query[:3]] == ["RGB", "P", "I;16"]
    # Both sides below read through the same read_image: check on its own that it turns the JPEG upright,
    # against the original within JPEG's error (measured: mean 1.0, max 9; upside down the mean is 45).
    upright = read_image(query[0])
    assert Image.open(query[0]).size == (rgb.height, rgb.width) and upright.size == rgb.size
    error = np.abs(np.asarray(upright, np.int16) - np.asarray(rgb, np.int16))
    assert error.mean() < 3 and error.max() <= 32, (error.mean(), error.max())

    monkeypatch.setattr(data_build, "_root", str(tmp_path))
    cfg = demo_cfg_with_weights.clone()
    cfg.DATASETS.TESTS = ("Market1501",)
    evaluated = evaluation_features(cfg, "Market1501")  # what --eval-only evaluates on

    extracted = extract.extract_features(query, FeatureExtractor(cfg, batch_size=5))
    difference = np.abs(extracted - np.stack([evaluated[p] for p in query])).max()
    assert difference < 1e-6, difference


# ------------------------------------------------------------------------------------- non-finite, .npy, fit
def features_file(path, rows=5, bad=(), zero=()):
    """An .npz as mdpr-extract writes it, with NaN / inf in the rows ``bad`` and the rows ``zero`` all zero."""
    features = np.random.default_rng(0).standard_normal((rows, 8)).astype(np.float32)
    for row, value in zip(bad, (np.nan, np.inf, -np.inf)):
        features[row, 3] = value
    features[list(zero)] = 0
    np.savez(path, features=features, paths=np.array([f"person_{i}.jpg" for i in range(rows)]))
    return str(path)


@pytest.mark.parametrize("rows, message", [
    ({"bad": (1, 3)}, r"2 of 5 feature rows are not finite \(NaN or inf\): row 1 \(person_1\.jpg\), row 3 "
                      r"\(person_3\.jpg\); extract those images again with mdpr-extract"),
    # a zero row was normalised to zero and found at distance 0.5 from every gallery image
    ({"zero": (2,)}, r"1 of 5 feature rows are all zero \(at the same distance from every feature\): row 2 "
                     r"\(person_2\.jpg\); extract those images again with mdpr-extract"),
], ids=["non-finite", "zero"])
def test_search_refuses_unusable_feature_rows_naming_them(tmp_path, rows, message):
    bad = features_file(tmp_path / "bad.npz", **rows)
    message = r"bad\.npz: " + message
    with pytest.raises(SystemExit, match=r"^mdpr-search: error: .*" + message):
        search.main(["index", "--features", bad, "--output", str(tmp_path / "bad.index")])
    assert not (tmp_path / "bad.index").exists()

    index = str(tmp_path / "good.index")
    search.main(["index", "--features", features_file(tmp_path / "good.npz"), "--output", index])
    for extra in ([], ["--rerank", "--k1", "3", "--k2", "2"]):
        with pytest.raises(SystemExit, match=message):
            search.main(["query", "--index", index, "--features", bad, *extra])


@pytest.mark.parametrize("arrays, message", [
    ({"features": np.ones((2, 0), np.float32), "paths": np.array(["a", "b"])},
     r"'features' must be a non-empty N x D array, got shape \(2, 0\)"),
    ({"features": np.ones((2, 4), np.float32), "paths": np.array([["a", "b"], ["c", "d"]])},
     r"'paths' must be a list of N image paths, got an array of shape \(2, 2\)"),
    ({"features": np.ones((1, 4), np.float32), "paths": np.array("a")},
     r"'paths' must be a list of N image paths, got an array of shape \(\)"),
], ids=["no columns", "2-d paths", "0-d paths"])
def test_features_files_of_other_shapes_are_refused(tmp_path, arrays, message):
    np.savez(tmp_path / "odd.npz", **arrays)
    with pytest.raises(SystemExit, match=r"^mdpr-search: error: .*odd\.npz: " + message):
        search.main(["index", "--features", str(tmp_path / "odd.npz"), "--output", str(tmp_path / "odd.index")])
    assert not (tmp_path / "odd.index").exists()


FORMULA_NAMES = ["=HYPERLINK(\"http://x\")", "+cmd.jpg", "-1_c1s1_000401_03.jpg", "@SUM(A1).jpg", "\tx.jpg",
                 "\rx.jpg"]


def test_results_csv_cells_a_spreadsheet_would_run_are_quoted(tmp_path):
    """An image file name starting with = (or +, -, @, a tab, a return) became a formula when results.csv was
    opened in a spreadsheet."""
    names = FORMULA_NAMES + ["plain.jpg"]
    features = np.eye(len(names), 8, dtype=np.float32) + 0.1
    np.savez(tmp_path / "f.npz", features=features, paths=np.array(names))
    index, results = str(tmp_path / "g.index"), tmp_path / "results.csv"
    search.main(["index", "--features", str(tmp_path / "f.npz"), "--output", index])
    search.main(["query", "--index", index, "--features", str(tmp_path / "f.npz"), "--topk", "1",
                 "--output", str(results)])
    with open(results, newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert [(row[0], row[2]) for row in rows] == [("'" + n, "'" + n) for n in FORMULA_NAMES] + [("plain.jpg",) * 2]
    assert all(float(row[3]) < 1e-5 for row in rows)  # the distances stay numbers


def test_spreadsheet_safe_quotes_formulas_and_leaves_numbers():
    from mdpr_plugin.tools.common import spreadsheet_safe

    assert [spreadsheet_safe(c) for c in ["=1+2", "-cmd", "-0.5", "+3", -0.25, 7, "a=b", ""]] == [
        "'=1+2", "'-cmd", "-0.5", "+3", -0.25, 7, "a=b", ""]


def test_the_ranking_summary_quotes_formulas(tmp_path):
    from mdpr_plugin.tools.visualize.ranking import RankedQuery, write_summary

    query = RankedQuery(index=0, path="=cmd|' /C calc'!A0", pid=1, camid=0, ap=0.5, gallery=[3],
                        gallery_paths=["@SUM(1+1)*cmd.jpg"], distances=[-1e-7], correct=[True])
    with open(tmp_path / "summary.csv", "w", newline="") as f:
        write_summary(f, [query], ["0001_query.png"])
    with open(tmp_path / "summary.csv", newline="") as f:
        row = list(csv.reader(f))[1]
    assert row == ["1", "0001_query.png", "'=cmd|' /C calc'!A0", "1", "0", "0.500000", "1", "'@SUM(1+1)*cmd.jpg",
                   "-0.000000"]


@pytest.mark.parametrize("options, message", [
    (["--rerank", "--k1", "0"], r"--k1 and --k2 must be at least 1, got 0 and 6"),
    (["--rerank", "--k2", "0"], r"--k1 and --k2 must be at least 1, got 20 and 0"),
    (["--rerank", "--lambda", "1.5"], r"--lambda is the weight of the original distance, from 0 to 1; got 1\.5"),
    (["--rerank", "--lambda", "-0.1"], r"--lambda is the weight of the original distance, from 0 to 1; got -0\.1"),
    (["--nprobe", "0"], r"--nprobe must be at least 1, got 0"),
    (["--nprobe", "-3"], r"--nprobe must be at least 1, got -3"),
], ids=["k1 0", "k2 0", "lambda above 1", "lambda below 0", "nprobe 0", "nprobe negative"])
def test_query_settings_out_of_range_are_refused(tmp_path, options, message):
    """--k1 0 raised IndexError, --k2 0 ZeroDivisionError, --nprobe 0 faiss's RuntimeError, a negative one an
    OverflowError; a --lambda outside 0-1 ranked by another distance, silently."""
    features = features_file(tmp_path / "f.npz", rows=40)
    index = str(tmp_path / "ivf.index")
    search.main(["index", "--features", features, "--output", index, "--ivf", "2"])
    with pytest.raises(SystemExit, match=r"^mdpr-search: error: " + message):
        search.main(["query", "--index", index, "--features", features, *options])


@pytest.mark.parametrize("sidecar", ['{"paths": 5}', '[1, 2]', '{"paths": "a.jpg"}'])
def test_an_index_sidecar_without_a_list_of_paths_is_refused(tmp_path, sidecar):
    features = features_file(tmp_path / "f.npz")
    index = str(tmp_path / "g.index")
    search.main(["index", "--features", features, "--output", index])
    (tmp_path / "g.index.json").write_text(sidecar)
    with pytest.raises(SystemExit, match=rf"^mdpr-search: error: {index}\.json has no 'paths' list; rebuild the index"):
        search.main(["query", "--index", index, "--features", features])


def test_a_npy_features_file_is_refused_in_one_line(tmp_path):
    np.save(tmp_path / "gallery.npy", np.ones((4, 8), np.float32))
    with pytest.raises(SystemExit) as stop:
        search.main(["index", "--features", str(tmp_path / "gallery.npy"), "--output", str(tmp_path / "g.index")])
    assert stop.value.code == (
        f"mdpr-search: error: {tmp_path / 'gallery.npy'} is a .npy file (a bare 4 x 8 array, without image paths); "
        "an .npz written by mdpr-extract is expected: make it with mdpr-extract --input FOLDER --output FILE.npz")


@pytest.mark.slow
def test_extract_refuses_non_finite_features_naming_the_image(image_folder, demo_cfg_with_weights):
    paths = extract.list_images(image_folder)
    extractor = FeatureExtractor(demo_cfg_with_weights, batch_size=5)
    model = extractor.model

    batches = []

    def nan_for_the_eighth_image(images):  # the third image of the second batch
        features = model(images)
        batches.append(len(images))
        if len(batches) == 2:
            features[2, 0] = float("nan")
        return features

    extractor.model = nan_for_the_eighth_image
    with pytest.raises(ValueError, match=rf"^The model .*model_final\.pth gave non-finite features \(NaN or inf\) "
                                         rf"for 1 of 5 images: {paths[7]}\. Check the model's weights"):
        extract.extract_features(paths, extractor)


def test_extract_with_nan_weights_writes_nothing(demo_weights, image_folder, tmp_path):
    checkpoint = torch.load(demo_weights, weights_only=True)
    checkpoint["model"]["heads.fusion.bottleneck.0.running_var"][0] = float("nan")
    torch.save(checkpoint, tmp_path / "nan.pth")
    output = tmp_path / "f.npz"
    message = r"^mdpr-extract: error: The model .*nan\.pth gave non-finite features \(NaN or inf\) for 12 of 12 " \
              r"images: .*and 7 more\. Check the model's weights"
    with pytest.raises(SystemExit, match=message):
        extract.main(["--config-file", MDPR_DEMO_CONFIG, "--input", image_folder, "--output", str(output),
                      "--batch-size", "12", "MODEL.WEIGHTS", str(tmp_path / "nan.pth"), "MODEL.DEVICE", "cpu"])
    assert not output.exists()


def test_extract_refuses_weights_of_another_model(image_folder, tmp_path):
    cfg = load_config("configs/Baseline-demo.yml", "MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False")
    Checkpointer(build_model(cfg), save_dir=str(tmp_path)).save("baseline")
    with pytest.raises(SystemExit) as stop:
        extract.main(["--config-file", MDPR_DEMO_CONFIG, "--input", image_folder, "--output", str(tmp_path / "f.npz"),
                      "MODEL.WEIGHTS", str(tmp_path / "baseline.pth"), "MODEL.DEVICE", "cpu"])
    message = str(stop.value.code)
    assert message.startswith(f"mdpr-extract: error: {tmp_path / 'baseline.pth'} does not fit the model MDPR")
    assert "\n" not in message and not (tmp_path / "f.npz").exists()
