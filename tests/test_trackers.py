"""FeatureExtractor as the appearance model of real BoxMOT trackers: BotSort, DeepOcSort and BoostTrack run end to end
with ``reid_model=extractor`` on a synthetic scene of bundled people crossing and hiding one another; what they
receive equals ``crops(frame, boxes, bgr=True)``; boxes partly or wholly outside the frame do not stop them; no
tracker builds (downloads) a model of its own. The tracking benchmark's runs with embeddings handed over in
Detections (as docs/trackers.md's example for several streams), and the identity metrics it reports."""
import numpy as np
import pytest
from boxmot import BoostTrack, BotSort, DeepOcSort
from helpers import logged, save_demo_checkpoint

from benchmarks.tracking import run_tracker, tracker_runs
from mdpr_plugin import FeatureExtractor
from mdpr_plugin.evaluation.tracking_metrics import identity_scores
from mdpr_plugin.synthetic.people_scene import make_sequence

OUTSIDE = np.array([[700.0, 120.0, 760.0, 250.0, 0.9, 0.0]], np.float32)  # right of the 640 x 360 frame
OUTSIDE_STRIP = [[639, 120, 640, 250]]  # the frame's 1-pixel-wide strip nearest to it


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_demo_checkpoint(tmp_path_factory.mktemp("weights"))


@pytest.fixture
def extractor(weights):
    """A new extractor for each test: it warns once in its life about boxes outside the frame."""
    return FeatureExtractor("MDPR/demo.yml", weights, device="cpu")


@pytest.fixture(scope="module")
def scene():
    """5 people for 24 frames; every 6th frame also has a detection wholly outside the frame (a detector's glitch)."""
    scene = make_sequence(num_people=5, num_frames=24, seed=0)
    for t in range(0, len(scene.frames), 6):
        scene.detections[t] = np.vstack([scene.detections[t], OUTSIDE])
    return scene


@pytest.fixture
def received(extractor, monkeypatch):
    """Every ``get_features`` call the tracker makes: (boxes, frame, features returned)."""
    calls, get_features = [], extractor.get_features

    def recording(boxes, image):
        features = get_features(boxes, image)
        calls.append((np.array(boxes), image, features))
        return features

    monkeypatch.setattr(extractor, "get_features", recording)
    return calls


TRACKERS = {
    "BotSort": lambda extractor: BotSort(reid_model=extractor, use_cmc=False),
    "DeepOcSort": lambda extractor: DeepOcSort(reid_model=extractor, cmc_off=True),
    "BoostTrack": lambda extractor: BoostTrack(reid_model=extractor, use_embeddings=True, use_cmc=False),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TRACKERS))
def test_a_tracker_owning_the_extractor_runs_end_to_end(name, extractor, scene, received, no_downloads):
    tracker = TRACKERS[name](extractor)
    with logged("mdpr_plugin") as warnings:
        ids, boxes = run_tracker(tracker, scene)

    assert len(received) == sum(len(d) > 0 for d in scene.detections), "one call per frame with detections"
    assert any(len(frame_ids) for frame_ids in ids[5:]), f"{name} confirmed no track"
    frames_with_detections = [t for t, d in enumerate(scene.detections) if len(d)]
    partly_outside_checked = 0
    for t, (boxes_given, image, features) in zip(frames_with_detections, received):
        np.testing.assert_array_equal(boxes_given, scene.detections[t][:, :4])
        assert image is scene.frames[t]
        assert features.dtype == np.float32 and features.shape == (len(boxes_given), extractor.feature_dim)
        inside = (boxes_given[:, 0] < 640) & (boxes_given[:, 2] > 0)
        partly_outside = inside & ((boxes_given[:, 0] < 0) | (boxes_given[:, 2] > 640))
        # the frames with a box wholly or partly outside (computing every frame's crops again costs time)
        if t % 6 == 0 or partly_outside.any():
            np.testing.assert_allclose(features[inside], extractor.crops(image, boxes_given[inside], bgr=True),
                                       atol=1e-6, err_msg=f"frame {t}")
            if not inside.all():
                np.testing.assert_allclose(features[~inside], extractor.crops(image, OUTSIDE_STRIP, bgr=True),
                                           atol=1e-6)
            partly_outside_checked += partly_outside.sum()
    assert partly_outside_checked > 0, "the scene has boxes partly outside the frame"
    assert len([w for w in warnings if "no pixel in the 640 x 360 frame" in w]) == 1, warnings


def test_the_benchmark_s_tracker_runs_take_precomputed_embeddings(extractor, scene):
    features = extractor.get_features_batch([d[:, :4] for d in scene.detections], scene.frames)
    runs = tracker_runs(scene, features)
    assert {r["tracker"] for r in runs} == {"BotSort", "StrongSort"}
    assert all(0 <= r["idf1"] <= 1 for r in runs)


# ------------------------------------------------------------------------------------------ metrics
def box(x):
    return [x, 0.0, x + 10.0, 20.0]


def test_identity_metrics_of_perfect_tracks():
    truth_ids, truth = [[0, 1]] * 4, [np.array([box(0), box(50)])] * 4
    scores = identity_scores(truth_ids, truth, [[7, 9]] * 4, truth)
    assert (scores.idf1, scores.id_switches, scores.track_ids) == (1.0, 0, 2)


def test_identity_metrics_of_two_tracks_swapping_halfway():
    """Frames 0-4 track 7 follows person 0, frames 5-9 person 1: each pairing matches 5 of 10 frames, IDF1
    2 x 10 / (20 + 20); both people change track id once."""
    truth_ids, truth = [[0, 1]] * 10, [np.array([box(0), box(50)])] * 10
    track_ids = [[7, 9]] * 5 + [[9, 7]] * 5
    scores = identity_scores(truth_ids, truth, track_ids, truth)
    assert scores.idf1 == pytest.approx(0.5) and scores.id_switches == 2


def test_identity_metrics_of_a_track_lost_and_restarted_under_a_new_id():
    """Person 0 tracked as 3 for 6 frames, missed for 2, then as 4 for 2: IDTP 6 of 10 true and 8 track boxes;
    one switch (3 -> 4), a box far off (IoU < 0.5) matching nothing."""
    truth_ids, truth = [[0]] * 10, [np.array([box(0)])] * 10
    track_ids = [[3]] * 6 + [[]] * 2 + [[4]] * 2
    track_boxes = [np.array([box(0)])] * 6 + [np.zeros((0, 4))] * 2 + [np.array([box(2)])] * 2
    scores = identity_scores(truth_ids, truth, track_ids, track_boxes)
    assert scores.idf1 == pytest.approx(2 * 6 / 18) and scores.id_switches == 1
    far = [np.array([box(6)])] * 10  # IoU 4/16
    assert identity_scores(truth_ids, truth, [[3]] * 10, far).idf1 == 0.0
