"""mdpr-visualize: ranked-list and attention pictures, checked pixel by pixel against the ground truth.

The bundled test set's file names carry the truth (``0005_c2s1_...``: identity 5, camera 2), so the
frame colours are checked against identities read from the names, not from the tool's own output.
"""
import contextlib
import csv
import io
import os
import re
import runpy
import shutil
import sys

import numpy as np
import pytest
import torch
from helpers import BUNDLED_IMAGES, MDPR_DEMO_CONFIG, REPO, load_config
from PIL import Image

from mdpr_plugin import FeatureExtractor
from mdpr_plugin.evaluation import evaluate_rank, pairwise_distance, rerank_distance
from mdpr_plugin.tools import common
from mdpr_plugin.tools.visualize import attention, drawing, main, ranking
from mdpr_plugin.tools.visualize.cli import run_command

# as in tests/tools/conftest.py (a module named conftest cannot be imported from here: tests/ has one too)
TILE_W, TILE_H = 64, 128  # the demo's INPUT.SIZE_TEST is [128, 64] (height, width)
ATTN_NUM = 2              # the demo's ATTN_NUM (the config default)
QUERY = os.path.join(BUNDLED_IMAGES, "query")


def identity(path):
    """(person id, camera number) from a Market-1501 file name such as 0005_c2s1_000976_00.jpg."""
    match = re.match(r"(\d{4})_c(\d)", os.path.basename(path))
    return int(match.group(1)), int(match.group(2))


def ranking_size(topk, scale=1):
    """The ranked-list layout: 2 title lines, then topk+1 framed tiles (the query set apart) over 2 caption lines."""
    framed_w, framed_h = scale * TILE_W + 2 * drawing.FRAME, scale * TILE_H + 2 * drawing.FRAME
    width = 2 * drawing.MARGIN + (topk + 1) * framed_w + ranking.QUERY_GAP + (topk - 1) * drawing.GAP
    height = 2 * drawing.MARGIN + 2 * drawing.LINE + framed_h + 2 * drawing.LINE
    return width, height


def frame_pixels(slot):
    """Two pixels inside the frame of ``slot`` (0: query): on its left edge and on its top edge."""
    framed_w = TILE_W + 2 * drawing.FRAME
    x = drawing.MARGIN + slot * framed_w + (ranking.QUERY_GAP + (slot - 1) * drawing.GAP if slot else 0)
    y = drawing.MARGIN + 2 * drawing.LINE
    return [(x + 1, y + TILE_H // 2), (x + framed_w // 2, y + 1)]


def run_ranking(output_dir, *options, weights):
    """Run the command as the CLI does; return (ranked lists, printed text, summary rows)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ranked = run_command("ranking", ["--config-file", MDPR_DEMO_CONFIG, "--output-dir", str(output_dir), *options,
                                         "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu"])
    with open(os.path.join(output_dir, "summary.csv")) as handle:
        rows = list(csv.DictReader(handle))
    return ranked, out.getvalue(), rows


@pytest.fixture(scope="module")
def ascending(demo_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ranking_ascending")
    return (folder,) + run_ranking(folder, "--topk", "3", weights=demo_weights)


@pytest.fixture(scope="module")
def descending(demo_weights, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ranking_descending")
    return (folder,) + run_ranking(folder, "--topk", "2", "--order", "ap-descending", "--num-queries", "5",
                                   "--scale", "2", weights=demo_weights)


# ----------------------------------------------------------------------------------------- ranking
@pytest.mark.slow
def test_one_picture_per_query_of_the_layout_size(ascending, descending):
    for (folder, ranked, _, _), topk, count, scale in ((ascending, 3, 32, 1), (descending, 2, 5, 2)):
        pictures = sorted(name for name in os.listdir(folder) if name.endswith(".png"))
        assert len(pictures) == len(ranked) == count
        for name in pictures:
            with Image.open(os.path.join(folder, name)) as picture:
                assert picture.size == ranking_size(topk, scale)


@pytest.mark.slow
def test_frames_are_green_for_the_query_identity_and_red_otherwise(ascending):
    folder, ranked, _, rows = ascending
    for query, row in zip(ranked, rows):
        q_pid, q_cam = identity(query.path)
        picture = np.asarray(Image.open(os.path.join(folder, row["picture"])).convert("RGB"))
        assert len(query.gallery_paths) == 3
        for slot, path in enumerate([query.path] + query.gallery_paths):
            g_pid, g_cam = identity(path)
            if slot == 0:
                expected = drawing.QUERY
            else:
                # fastreid's protocol: the query's identity under the query's own camera is never ranked
                assert (g_pid, g_cam) != (q_pid, q_cam), f"{path} should be excluded for {query.path}"
                expected = drawing.CORRECT if g_pid == q_pid else drawing.WRONG
            for x, y in frame_pixels(slot):
                assert tuple(picture[y, x]) == expected, f"{row['picture']} slot {slot} ({path})"


@pytest.mark.slow
def test_gallery_is_in_ascending_distance(ascending):
    for query in ascending[1]:
        assert query.distances == sorted(query.distances)


@pytest.mark.slow
def test_ap_ascending_order_and_file_names(ascending):
    folder, ranked, printed, rows = ascending
    assert "ap-ascending" in printed
    names = sorted(name for name in os.listdir(folder) if name.endswith(".png"))
    assert [row["picture"] for row in rows] == names  # file names sort in the chosen order
    assert [os.path.basename(row["query"]) for row in rows] == [os.path.basename(q.path) for q in ranked]
    aps = [float(row["ap"]) for row in rows if row["ap"]]
    assert aps == sorted(aps) and len(set(aps)) > 1
    assert all(names[i].startswith(f"{i + 1:04d}_") for i in range(len(names)))


@pytest.mark.slow
def test_ap_descending_with_num_queries_takes_the_best_queries(ascending, descending):
    _, _, printed, rows = descending
    assert "ap-descending" in printed
    aps = [float(row["ap"]) for row in rows]
    every_ap = [float(row["ap"]) for row in ascending[3] if row["ap"]]
    # the five best of all queries (same model, same distances), not the first five of the dataset
    assert aps == sorted(every_ap, reverse=True)[:5]


@pytest.mark.slow
def test_rerank_flag_turns_on_the_evaluation_s_re_ranking(ascending, demo_weights, tmp_path, monkeypatch):
    """With --rerank, the drawn distances and the printed mAP / Rank-1 are those of k-reciprocal re-ranking
    (TEST.RERANK's k1, k2 and lambda) of the evaluation's features; without it (``ascending``), those of the
    plain distance."""
    scored = {}  # the evaluator's features, pids and camids, recorded as it computes its distance
    distance = ranking._DistanceKeepingEvaluator.distance

    def recording_distance(self, query, gallery):
        scored.update(query=query.clone(), gallery=gallery.clone(), ids=self._features()[1:])
        return distance(self, query, gallery)

    monkeypatch.setattr(ranking._DistanceKeepingEvaluator, "distance", recording_distance)
    reranked = run_ranking(tmp_path, "--topk", "3", "--num-queries", "5", "--rerank", weights=demo_weights)
    test = load_config(MDPR_DEMO_CONFIG).TEST
    query, gallery = scored["query"], scored["gallery"]
    expected = {"re-ranked": np.asarray(rerank_distance(query, gallery, test.METRIC, test.RERANK.K1, test.RERANK.K2,
                                                        test.RERANK.LAMBDA)),
                "plain": np.asarray(pairwise_distance(query, gallery, test.METRIC))}
    assert not np.allclose(expected["re-ranked"], expected["plain"], atol=0.01)  # the two can be told apart
    pids, camids = (np.asarray(ids) for ids in scored["ids"])
    nq = len(query)
    q_pids, g_pids, q_cams, g_cams = pids[:nq], pids[nq:], camids[:nq], camids[nq:]

    for (ranked, printed, _), kind in ((reranked, "re-ranked"), (ascending[1:], "plain")):
        dist = expected[kind]
        for drawn in ranked:
            q = drawn.index
            allowed = (g_pids != q_pids[q]) | (g_cams != q_cams[q])  # not its identity under its own camera
            np.testing.assert_allclose(drawn.distances, dist[q, drawn.gallery], atol=1e-5, err_msg=kind)
            np.testing.assert_allclose(drawn.distances, np.sort(dist[q][allowed])[:3], atol=1e-5, err_msg=kind)
        cmc, aps, _ = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)
        reported = re.search(r"mAP ([\d.]+)%, Rank-1 ([\d.]+)%", printed)
        assert float(reported.group(1)) == pytest.approx(np.mean(aps) * 100, abs=0.006), kind
        assert float(reported.group(2)) == pytest.approx(cmc[0] * 100, abs=0.006), kind
        assert ("re-ranked" in printed) == (kind == "re-ranked")


@pytest.mark.slow
def test_summary_matches_the_evaluation(ascending):
    """Mean AP and rank-1 of the summary are the mAP / Rank-1 the evaluation printed: the per-query AP is
    attributed to the right query, and the drawn top-1 follows the evaluation's exclusion rule."""
    _, ranked, printed, rows = ascending
    reported = re.search(r"mAP ([\d.]+)%, Rank-1 ([\d.]+)%", printed)
    valid = [row for row in rows if row["ap"]]
    assert len(valid) < len(rows)  # the bundled set has queries seen in the gallery only by their own camera
    assert np.mean([float(row["ap"]) for row in valid]) * 100 == pytest.approx(float(reported.group(1)), abs=0.006)
    assert np.mean([int(row["rank1_correct"]) for row in valid]) * 100 == pytest.approx(
        float(reported.group(2)), abs=0.006)
    for query, row in zip(ranked, rows):
        assert int(row["rank1_correct"]) == (identity(query.gallery_paths[0])[0] == identity(query.path)[0])


@pytest.mark.slow
def test_queries_without_a_findable_match_have_no_ap_and_come_last(ascending):
    _, ranked, _, rows = ascending
    for query in ranked:
        q_pid, q_cam = identity(query.path)
        findable = any(identity(p)[0] == q_pid and identity(p)[1] != q_cam
                       for p in os.listdir(os.path.join(BUNDLED_IMAGES, "bounding_box_test")))
        assert np.isnan(query.ap) == (not findable)
    flags = [not row["ap"] for row in rows]
    assert flags == sorted(flags)  # all the empty APs at the end


def test_rank_queries_by_hand():
    # gallery: 0 id1 cam0 (excluded for query 0), 1 id2 cam0, 2 id1 cam1, 3 id3 cam2
    dist = np.array([[0.0, 0.1, 0.5, 0.9],    # query id1 cam0: id2 (wrong) then id1 cam1 (right): AP 0.5
                     [0.3, 0.8, 0.2, 0.1],    # query id3 cam1: id3 first: AP 1
                     [0.1, 0.2, 0.3, 0.4]])   # query id7: not in the gallery, no AP
    q_pids, q_cams = [1, 3, 7], [0, 1, 0]
    g_pids, g_cams = [1, 2, 1, 3], [0, 0, 1, 2]
    ranked = ranking.rank_queries(dist, q_pids, g_pids, q_cams, g_cams, ["a", "b", "c"], ["g0", "g1", "g2", "g3"],
                                  topk=2, order="ap-ascending")
    assert [q.path for q in ranked] == ["a", "b", "c"]
    assert [q.ap for q in ranked[:2]] == [0.5, 1.0] and np.isnan(ranked[2].ap)
    assert ranked[0].gallery_paths == ["g1", "g2"] and ranked[0].correct == [False, True]
    assert ranked[1].gallery == [3, 2] and ranked[1].rank1_correct
    assert ranked[2].correct == [False, False]
    first = ranking.rank_queries(dist, q_pids, g_pids, q_cams, g_cams, ["a", "b", "c"], ["g0", "g1", "g2", "g3"],
                                 topk=4, order="ap-descending", num_queries=1)
    assert [q.path for q in first] == ["b"] and first[0].gallery == [3, 2, 0, 1]  # nothing excluded for b


def test_order_queries():
    ap = np.array([0.5, np.nan, 0.2, 0.5])
    assert ranking.order_queries(ap, "ap-ascending").tolist() == [2, 0, 3, 1]
    assert ranking.order_queries(ap, "ap-descending").tolist() == [0, 3, 2, 1]
    assert ranking.order_queries(ap, "query").tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="ap-ascending"):
        ranking.order_queries(ap, "best")


# ----------------------------------------------------------------------------------------- attention
@pytest.fixture(scope="module")
def demo_extractor(demo_weights):
    class Args:
        config_file = MDPR_DEMO_CONFIG
        opts = ["MODEL.WEIGHTS", demo_weights, "MODEL.DEVICE", "cpu"]
    return FeatureExtractor(common.setup_tool_config(Args))


def test_attention_maps_are_a_softmax_partition_before_drawing(demo_extractor):
    model = demo_extractor.model
    paths = sorted(os.path.join(QUERY, name) for name in os.listdir(QUERY))[:4]
    images = demo_extractor.preprocess(paths)
    with torch.no_grad():
        raw = model.attention_maps(images, include_background=True)
        default = model.attention_maps(images)
    assert set(default) == {"attention4", "attention3"}  # the default is unchanged: foreground only
    for level in attention.LEVELS:
        assert torch.equal(default[f"attention{level}"], raw[f"attention{level}"])
    maps = attention.attention_at(model, images, (TILE_H, TILE_W))
    for level, (foreground, background) in maps.items():
        assert foreground.shape == (4, ATTN_NUM, TILE_H, TILE_W) and background.shape == (4, 1, TILE_H, TILE_W)
        total = foreground.sum(dim=1, keepdim=True)
        assert total.max() <= 1 + 1e-5
        assert torch.allclose(total + background, torch.ones_like(background), atol=1e-5)


def test_check_partition_rejects_maps_that_are_not_a_softmax():
    foreground = torch.full((1, 2, 4, 4), 0.6)  # sums to 1.2
    with pytest.raises(ValueError, match="layer4"):
        attention.check_partition(foreground, torch.zeros(1, 1, 4, 4), "layer4 attention")
    with pytest.raises(ValueError, match="off 1"):
        attention.check_partition(torch.full((1, 2, 4, 4), 0.3), torch.full((1, 1, 4, 4), 0.3), "x")
    attention.check_partition(torch.full((1, 2, 4, 4), 0.3), torch.full((1, 1, 4, 4), 0.4), "x")


def attention_size(num_attn, scale=1):
    """The attention layout: a title line, then 2 rows (layer4, layer3) of image + M maps + background."""
    columns = num_attn + 2
    width = 2 * drawing.MARGIN + columns * scale * TILE_W + (columns - 1) * drawing.GAP
    height = 2 * drawing.MARGIN + drawing.LINE + 2 * (scale * TILE_H + 2 * drawing.LINE) + drawing.GAP
    return width, height


def test_overlay_puts_the_heat_where_the_map_is():
    image = torch.full((3, TILE_H, TILE_W), 128.0)
    top = torch.zeros(1, TILE_H, TILE_W)
    top[:, : TILE_H // 2] = 1.0
    maps = {level: (torch.cat([top, torch.zeros_like(top)]), 1 - top) for level in attention.LEVELS}
    picture = np.asarray(attention.draw_attention("synthetic", image, maps))
    assert picture.shape[1::-1] == attention_size(2)
    x = drawing.MARGIN + (TILE_W + drawing.GAP) + TILE_W // 2      # column 1: "fg 1" of layer4
    y = drawing.MARGIN + drawing.LINE
    # grey 128 blended half-and-half with jet(1) = (128, 0, 0) and jet(0) = (0, 0, 128)
    assert tuple(picture[y + 10, x]) == (128, 64, 64)
    assert tuple(picture[y + TILE_H - 10, x]) == (64, 64, 128)
    x_background = drawing.MARGIN + 3 * (TILE_W + drawing.GAP) + TILE_W // 2
    assert tuple(picture[y + 10, x_background]) == (64, 64, 128)
    assert tuple(picture[y + TILE_H - 10, x_background]) == (128, 64, 64)


def test_jet_colormap_ends_and_middle():
    assert drawing.jet(np.array([[0.0, 0.5, 1.0, 2.0]])).tolist() == [
        [[0, 0, 128], [128, 255, 128], [128, 0, 0], [128, 0, 0]]]


def test_attention_command_on_files_and_folders(demo_weights, tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    names = sorted(os.listdir(QUERY))[:3]
    shutil.copy(os.path.join(QUERY, names[0]), folder / names[0])
    shutil.copy(os.path.join(QUERY, names[1]), folder / "sub" / names[0])  # same name, other folder
    single = os.path.join(QUERY, names[2])
    out = tmp_path / "out"
    code = main(["attention", "--config-file", MDPR_DEMO_CONFIG, "--output-dir", str(out), "--input", str(folder),
                 "--input", single, "--scale", "2", "MODEL.WEIGHTS", demo_weights, "MODEL.DEVICE", "cpu"])
    assert code == 0
    stem = os.path.splitext(names[0])[0]
    written = sorted(os.listdir(out))
    assert written == sorted([f"{stem}.png", f"sub__{stem}.png", os.path.splitext(names[2])[0] + ".png"])
    for name in written:
        with Image.open(out / name) as picture:
            assert picture.size == attention_size(ATTN_NUM, scale=2)


@pytest.mark.slow
def test_attention_command_on_the_test_set(demo_weights, tmp_path):
    code = main(["attention", "--config-file", MDPR_DEMO_CONFIG, "--output-dir", str(tmp_path), "--test-set",
                 "MODEL.WEIGHTS", demo_weights, "MODEL.DEVICE", "cpu", "TEST.IMS_PER_BATCH", "64"])
    assert code == 0
    for part in ("query", "gallery"):
        expected = sorted(os.path.splitext(n)[0] + ".png"
                          for n in os.listdir(os.path.join(BUNDLED_IMAGES,
                                                           "query" if part == "query" else "bounding_box_test")))
        assert sorted(os.listdir(tmp_path / part)) == expected


@pytest.mark.parametrize("config, overrides, message", [
    (MDPR_DEMO_CONFIG, ["SOFT_BRANCH_ENABLE", "False"], "SOFT_BRANCH_ENABLE is False"),
    (os.path.join(REPO, "configs", "Baseline-demo.yml"), [], "MODEL.META_ARCHITECTURE is Baseline"),
])
def test_attention_refuses_models_without_a_soft_branch(demo_weights, tmp_path, config, overrides, message):
    with pytest.raises(SystemExit) as stop:
        main(["attention", "--config-file", config, "--output-dir", str(tmp_path), "--input", QUERY,
              "MODEL.WEIGHTS", demo_weights, *overrides])
    error = str(stop.value.code)  # a message as the exit code: printed on stderr, status 1
    assert message in error and error.startswith("mdpr-visualize attention: error")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("arguments, message", [
    (["attention", "--input", "no/such/folder", "MODEL.WEIGHTS", "{weights}"], "--input no/such/folder"),
    (["attention", "--input", QUERY], "MODEL.WEIGHTS is empty"),
    (["ranking", "MODEL.WEIGHTS", "missing.pth"], "Checkpoint missing.pth not found"),
    (["ranking", "MODEL.WEIGTHS", "x"], "Did you mean MODEL.WEIGHTS"),
])
def test_bad_input_names_the_problem(demo_weights, tmp_path, arguments, message):
    command, rest = arguments[0], [a.replace("{weights}", demo_weights) for a in arguments[1:]]
    with pytest.raises(SystemExit) as stop:
        main([command, "--config-file", MDPR_DEMO_CONFIG, "--output-dir", str(tmp_path / "out"), *rest])
    assert message in str(stop.value.code)


def test_usage_without_a_command(capsys):
    assert main([]) == 2
    assert main(["plot"]) == 2
    assert "ranking" in capsys.readouterr().err


def test_python_m_runs_the_command_line_and_exits_with_its_status(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["python -m mdpr_plugin.tools.visualize"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_module("mdpr_plugin.tools.visualize", run_name="__main__")
    assert stop.value.code == 2 and "usage: mdpr-visualize {ranking,attention}" in capsys.readouterr().err
