"""ReidFolder: a data set read from a folder named in the config (``DATASETS.FOLDER.ROOT``), with no code of one's own.

Layouts (docs/own-data.md gives them with examples):

* ``ROOT/{train,query,gallery}/<identity>/<image>``: one sub-folder per identity, any name;
* ``ROOT/{bounding_box_train,query,bounding_box_test}/<person>_c<camera>...<suffix>``: Market-1501's file names;
* a training split alone (``ROOT/train/<identity>/...`` or ``ROOT/bounding_box_train``): with
  ``DATASETS.FOLDER.TEST_IDS`` set, query and gallery are made from identities held back from it (see
  :func:`held_back_split`), and the split is kept in ``OUTPUT_DIR/reid_folder_split.json`` to be inspected and reused.

Cameras come from a ``c<N>`` folder under the identity folder (``<identity>/c1/img.jpg``) or from a Market-style
name; where there are none, each image is its own camera (see :func:`camera_rule`). Each split is read when first
used, so that a folder with a training split alone can train and one with query and gallery alone can be tested.
"""
import contextlib
import contextvars
import hashlib
import json
import logging
import math
import os
import random
import re
from collections import defaultdict
from dataclasses import dataclass

from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.bases import ImageDataset

from ..errors import InputError
from .checks import DatasetLayoutError, DatasetNotFoundError, describe_folder
from .images import IMAGE_FILE_SUFFIXES

logger = logging.getLogger(__name__)

SPLIT_FILE = "reid_folder_split.json"
IDENTITY_SPLITS = {"train": "train", "query": "query", "gallery": "gallery"}
MARKET_SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")  # <person id>_c<camera>, as Market-1501 names its crops
CAMERA_FOLDER = re.compile(r"^c(\d+)$")
JUNK_ID = "-1"  # Market-1501's junk crops (no person), left out as fastreid's Market1501 leaves them out
HELD_BACK_RULE = ("Identities held back from the training split: among those seen by 2 or more cameras (any, when "
                  "each image is its own camera), k drawn by random.Random(SEED).sample from their sorted names, k = "
                  "TEST_IDS when a count, else round(TEST_IDS x all identities), at least 1. Query: per held-back "
                  "identity, the first image (sorted paths) of each camera holding 2 or more of its images (of its "
                  "first camera when none does; of the identity when each image is its own camera); gallery: the rest.")
_config = contextvars.ContextVar("reid_folder_config", default=None)


@dataclass(frozen=True)
class Image:
    path: str  # relative to its split's folder, "/"-separated
    identity: str  # the identity folder's name, or the person id of a Market-style name
    camera: int = None  # None: no camera given


@dataclass(frozen=True)
class Settings:
    root: str
    test_ids: object  # None, a fraction 0 < x < 1 or a count >= 1
    seed: int
    output_dir: str


# ------------------------------------------------------------------------------------------- config
@contextlib.contextmanager
def folder_config(cfg):
    """Within this block, a ReidFolder built without ``cfg`` reads its keys from ``cfg``: the plugin's loaders build
    fastreid's data sets through fastreid's builders, which pass every data set class the same arguments."""
    token = _config.set(cfg)
    try:
        yield
    finally:
        _config.reset(token)


def check_test_ids(value):
    """``DATASETS.FOLDER.TEST_IDS``: None, a fraction 0 < x < 1 or a whole count >= 1."""
    if value is None:
        return None
    counts = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    fraction = isinstance(value, float) and 0 < value < 1
    if not (counts or fraction):
        raise InputError(f"DATASETS.FOLDER.TEST_IDS {value!r} is not allowed: give a fraction of the identities "
                         "between 0 and 1 (e.g. 0.2) or a count of identities >= 1 (e.g. 10), or None to hold none "
                         "back.")
    return value


def settings_of(cfg):
    if cfg is None:
        raise InputError("ReidFolder reads DATASETS.FOLDER.ROOT from the config: build it through train_net.py or the "
                         "plugin's Trainer, or give it the config: ReidFolder(cfg=cfg).")
    folder = cfg.DATASETS.get("FOLDER")
    if folder is None or not folder.get("ROOT"):
        raise InputError("DATASETS.NAMES or DATASETS.TESTS names ReidFolder, but DATASETS.FOLDER.ROOT is empty: set it "
                         "to your dataset's folder, e.g. DATASETS.FOLDER.ROOT datasets/my_people (docs/own-data.md).")
    return Settings(os.path.abspath(folder.ROOT), check_test_ids(folder.get("TEST_IDS")), int(folder.get("SEED", 0)),
                    cfg.OUTPUT_DIR)


# ------------------------------------------------------------------------------------------- reading
def _entries(folder):
    """The names in ``folder``, sorted, hidden ones (``.DS_Store``, macOS's ``._x.jpg``) left out."""
    try:
        return sorted(name for name in os.listdir(folder) if not name.startswith("."))
    except OSError as error:
        raise DatasetLayoutError(f"ReidFolder: {folder} could not be read ({error.strerror}); make it readable by "
                                 "this user.") from None


def is_image(name):
    return os.path.splitext(name)[1].lower() in IMAGE_FILE_SUFFIXES


def _market_camera(name):
    match = MARKET_NAME.match(name)
    return int(match.group(2)) if match else None


def read_identity_folders(folder):
    """The images of ``folder/<identity>/<image>`` and ``folder/<identity>/c<N>/<image>``, sorted by path; a camera
    from the ``c<N>`` folder or else from a Market-style file name."""
    images = []
    for identity in _entries(folder):
        identity_folder = os.path.join(folder, identity)
        if not os.path.isdir(identity_folder):
            if is_image(identity):
                raise DatasetLayoutError(
                    f"ReidFolder: {identity_folder} lies directly in {folder}, which holds one folder per identity: "
                    f"move it into {folder}/<identity>/ (or name it <person>_c<camera>_....jpg in bounding_box_train/, "
                    "query/ and bounding_box_test/ for Market-1501's layout).")
            continue  # a note or a list beside the identity folders
        for name in _entries(identity_folder):
            path = os.path.join(identity_folder, name)
            if os.path.isdir(path):
                images += _camera_folder_images(path, identity, name)
            elif is_image(name):
                images.append(Image(f"{identity}/{name}", identity, _market_camera(name)))
    return images


def _camera_folder_images(path, identity, name):
    match = CAMERA_FOLDER.match(name)
    if not match:
        raise DatasetLayoutError(
            f"ReidFolder: {path} is a folder, but an identity folder holds images and, for cameras, folders named c1, "
            "c2, ... only: rename it c<number> if it is a camera, or move its images up into the identity folder.")
    images = []
    for file_name in _entries(path):
        if os.path.isdir(os.path.join(path, file_name)):
            raise DatasetLayoutError(f"ReidFolder: {os.path.join(path, file_name)} is a folder inside the camera "
                                     f"folder {path}, which holds images only: move its images up into {path}.")
        if is_image(file_name):
            images.append(Image(f"{identity}/{name}/{file_name}", identity, int(match.group(1))))
    return images


def read_market_folder(folder):
    """The images of ``folder/<person>_c<camera>...``, sorted by name, Market-1501's junk (person -1) left out."""
    images = []
    for name in _entries(folder):
        if os.path.isdir(os.path.join(folder, name)) or not is_image(name):
            continue
        match = MARKET_NAME.match(name)
        if not match:
            raise DatasetLayoutError(
                f"ReidFolder: cannot read the person and camera from the file name {os.path.join(folder, name)}: the "
                "Market-1501 layout names each image <person id>_c<camera>..., e.g. 0002_c1s1_000451_03.jpg. Rename "
                "it, or put the images in one folder per identity under train/, query/ and gallery/.")
        if match.group(1) != JUNK_ID:
            images.append(Image(name, match.group(1), int(match.group(2))))
    return images


def find_layout(root):
    """``(reader, {role: folder or None})`` of ``root``: the identity-folder or the Market-1501 layout."""
    if not os.path.isdir(root):
        raise DatasetNotFoundError(f"DATASETS.FOLDER.ROOT {root} is not found ({describe_folder(root)}). Set it to the "
                                   "folder that holds train/ (and query/, gallery/), relative to the working "
                                   f"folder {os.getcwd()} or absolute.")
    identity, market = ({role: os.path.join(root, name) if os.path.isdir(os.path.join(root, name)) else None
                         for role, name in splits.items()} for splits in (IDENTITY_SPLITS, MARKET_SPLITS))
    has_identity = identity["train"] or identity["gallery"]
    has_market = market["train"] or market["gallery"]
    if has_identity and has_market:
        raise DatasetLayoutError(f"ReidFolder: {root} holds both train/ or gallery/ and bounding_box_train/ or "
                                 "bounding_box_test/: keep one layout (docs/own-data.md).")
    if has_market:
        return read_market_folder, market
    if has_identity:
        return read_identity_folders, identity
    raise DatasetLayoutError(f"ReidFolder: {root} holds no train/ or gallery/ folder ({describe_folder(root)}). Put "
                             "one folder per identity in ROOT/train/ (and ROOT/query/, ROOT/gallery/), or "
                             "Market-1501's bounding_box_train/, query/ and bounding_box_test/ (docs/own-data.md).")


# ------------------------------------------------------------------------------------------- checks
def check_split_not_empty(images, folder, role):
    if not images:
        raise DatasetLayoutError(f"ReidFolder: the {role} split is empty: no image in {folder} "
                                 f"({describe_folder(folder)}). Put each identity's images in {folder}/<identity>/ "
                                 f"(the image suffixes read: {', '.join(IMAGE_FILE_SUFFIXES)}).")


def check_cameras_given_alike(images, description):
    """Refuse a set where some images have a camera and others none: one image counted as its own camera beside
    camera folders is a mistake, and the two cannot be numbered together."""
    with_camera = [image for image in images if image.camera is not None]
    if with_camera and len(with_camera) < len(images):
        missing = next(image for image in images if image.camera is None)
        raise DatasetLayoutError(
            f"ReidFolder: {description}: {missing.path} has no camera (no c<N> folder, no Market-style name) but "
            f"{with_camera[0].path} has one: put every image of the set under a c<N> folder of its identity, or none.")


def check_training_identities(images, folder):
    """Every training identity needs 2 images or more: a triplet needs a positive, and an identity sampler
    repeats a single image."""
    counts = defaultdict(list)
    for image in images:
        counts[image.identity].append(image)
    single = sorted(identity for identity, found in counts.items() if len(found) == 1)
    if single:
        where = os.path.join(folder, counts[single[0]][0].path)
        more = f" (and {len(single) - 1} more identities)" if len(single) > 1 else ""
        raise DatasetLayoutError(f"ReidFolder: identity {single[0]} has one image in the training split ({where})"
                                 f"{more}; training needs 2 or more per identity: add images of it, or remove it.")


def check_queries(query, gallery, folders):
    """Every query identity in the gallery. Where cameras are given, the evaluation leaves out the gallery images of
    the query's identity from the query's camera (Market-1501's rule): refused when that leaves no query anything
    to find (every identity seen by one camera), a warning with the count when it leaves some."""
    gallery_cameras = defaultdict(set)
    for image in gallery:
        gallery_cameras[image.identity].add(image.camera)
    for image in query:
        if image.identity not in gallery_cameras:
            where = os.path.join(folders["query"], image.path)
            raise DatasetLayoutError(
                f"ReidFolder: the query identity {image.identity} ({where}) has no image in the gallery "
                f"{folders['gallery']}: add gallery images of it, or remove it from the query split.")
    unmatched = [image for image in query
                 if image.camera is not None and gallery_cameras[image.identity] <= {image.camera}]
    if not unmatched:
        return
    first = os.path.join(folders["query"], unmatched[0].path)
    if len(unmatched) == len(query):
        raise DatasetLayoutError(
            f"ReidFolder: no query has a gallery image of its identity from another camera (e.g. {first}, camera "
            f"{unmatched[0].camera}), and the evaluation leaves out same-camera matches of the query's identity "
            "(Market-1501's rule): nothing could be found. Add gallery images from other cameras, or remove the "
            "camera folders (each image then counts as its own camera, and nothing is left out).")
    logger.warning("ReidFolder: %d of %d queries have no gallery image of their identity from another camera (e.g. "
                   "%s, camera %d); the evaluation leaves them out.", len(unmatched), len(query), first,
                   unmatched[0].camera)


# ------------------------------------------------------------------------------------------- the split
def by_identity(images):
    grouped = defaultdict(list)
    for image in images:
        grouped[image.identity].append(image)
    return dict(sorted(grouped.items()))


def held_back_count(test_ids, identities):
    return test_ids if isinstance(test_ids, int) else max(1, math.floor(test_ids * identities + 0.5))


def held_back_queries(images):
    """The query images of one held-back identity (see HELD_BACK_RULE); the rest are its gallery."""
    if images[0].camera is None:
        return [images[0]]
    by_camera = defaultdict(list)
    for image in images:
        by_camera[image.camera].append(image)
    queries = [found[0] for _, found in sorted(by_camera.items()) if len(found) >= 2]
    return queries or [by_camera[min(by_camera)][0]]


def held_back_split(images, test_ids, seed, folder, option="DATASETS.FOLDER.TEST_IDS"):
    """``(train, query, gallery)`` of a training split alone, by HELD_BACK_RULE: every query then has a gallery
    image of its identity from another camera. ``option``: what the errors call ``test_ids``."""
    identities = by_identity(images)
    cameras_known = images[0].camera is not None
    eligible = [name for name, found in identities.items()
                if not cameras_known or len({image.camera for image in found}) >= 2]
    count = held_back_count(test_ids, len(identities))
    if count >= len(identities):
        raise InputError(f"{option} {test_ids!r} holds back {count} of the {len(identities)} identities "
                         f"of {folder}, leaving none to train on: give a smaller fraction or count.")
    if count > len(eligible):
        raise InputError(f"{option} {test_ids!r} asks for {count} held-back identities, but only "
                         f"{len(eligible)} of the {len(identities)} in {folder} are seen by 2 or more cameras, which a "
                         "query needs (the evaluation leaves out same-camera matches): give a smaller TEST_IDS, or add "
                         "images from other cameras.")
    held = set(random.Random(seed).sample(eligible, count))
    train = [image for image in images if image.identity not in held]
    query = [q for name in sorted(held) for q in held_back_queries(identities[name])]
    queried = set(query)
    gallery = [image for image in images if image.identity in held and image not in queried]
    return train, query, gallery


def listing_digest(images):
    """A fingerprint of the training split's files and what was read from them."""
    text = "\n".join(f"{image.path}\t{image.identity}\t{image.camera}" for image in images)
    return hashlib.sha256(text.encode()).hexdigest()


def split_record(settings, images, query, gallery):
    return {"made_by": "ReidFolder (mdpr_plugin/data/folder.py); docs/own-data.md", "rule": HELD_BACK_RULE,
            "root": settings.root, "test_ids": settings.test_ids, "seed": settings.seed,
            "train_images": len(images), "train_listing_sha256": listing_digest(images),
            "held_back_identities": sorted({image.identity for image in query}),
            "query": [image.path for image in query], "gallery": [image.path for image in gallery]}


def _split_file_error(path, problem):
    return InputError(f"ReidFolder: the split file {path} {problem}. Remove it to make a new split (a model trained in "
                      "this OUTPUT_DIR was trained on the old one), or set OUTPUT_DIR to another folder.")


def reuse_split(path, settings, images):
    """``(train, query, gallery)`` of the split file at ``path``, or None when there is none; refused when it does
    not match the folder and settings it would be used with."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        held, query_paths, gallery_paths = (set(record["held_back_identities"]), record["query"], record["gallery"])
        made_with = (record["test_ids"], record["seed"], record["train_listing_sha256"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _split_file_error(path, f"could not be read as ReidFolder's split ({type(error).__name__}: {error})")
    if made_with[:2] != (settings.test_ids, settings.seed):
        raise _split_file_error(path, f"was made with DATASETS.FOLDER.TEST_IDS {made_with[0]!r} and SEED "
                                      f"{made_with[1]}, not {settings.test_ids!r} and {settings.seed}")
    if made_with[2] != listing_digest(images):
        raise _split_file_error(path, f"was made from other files: {record.get('train_images')} training images then, "
                                      f"{len(images)} in {settings.root} now, or renamed or moved ones")
    by_path = {image.path: image for image in images}
    query, gallery = [by_path.get(p) for p in query_paths], [by_path.get(p) for p in gallery_paths]
    listed = [image for image in query + gallery if image is not None]
    if (None in query + gallery or len(set(listed)) != len(listed)
            or set(listed) != {image for image in images if image.identity in held}):
        raise _split_file_error(path, "does not list each image of its held-back identities once, in query or gallery")
    return [image for image in images if image.identity not in held], query, gallery


# ------------------------------------------------------------------------------------------- items
def camera_rule(images):
    """The line saying where the cameras come from and what the evaluation then leaves out."""
    if images and images[0].camera is None:
        return ("no camera folders (c<N>) or Market-style names: each image counts as its own camera, so the "
                "evaluation leaves out no gallery image (Market-1501's rule drops only gallery images of the query's "
                "identity from the query's camera).")
    cameras = sorted({image.camera for image in images})
    return (f"{len(cameras)} cameras ({', '.join(f'c{c}' for c in cameras[:8])}{', ...' if len(cameras) > 8 else ''}): "
            "the evaluation leaves out gallery images of the query's identity from the query's camera "
            "(Market-1501's rule).")


def training_items(images, folder, name):
    """fastreid's ``(path, pid, camid)`` rows: identities numbered in sorted order from 0, pids and camids prefixed
    with the data set's name (as fastreid's data sets do, so that several can be trained on together)."""
    numbers = {identity: i for i, identity in enumerate(sorted({image.identity for image in images}))}
    camera = (lambda i, image: f"{name}_image{i}") if images and images[0].camera is None else (
        lambda i, image: f"{name}_c{image.camera}")
    return [(os.path.join(folder, image.path), f"{name}_{numbers[image.identity]}", camera(i, image))
            for i, image in enumerate(images)]


def test_items(query, gallery, folders):
    """``(query rows, gallery rows)``: identities of query and gallery numbered together in sorted order; without
    cameras each image gets a camera number of its own."""
    numbers = {identity: i for i, identity in enumerate(sorted({image.identity for image in query + gallery}))}
    own_camera = bool(query) and query[0].camera is None
    rows = [(os.path.join(folders[role], image.path), numbers[image.identity], i if own_camera else image.camera)
            for i, (role, image) in enumerate([("query", q) for q in query] + [("gallery", g) for g in gallery])]
    return rows[:len(query)], rows[len(query):]


# ------------------------------------------------------------------------------------------- the data set
@DATASET_REGISTRY.register()
class ReidFolder(ImageDataset):
    """The folder ``DATASETS.FOLDER.ROOT`` (see the module's text and docs/own-data.md) as a fastreid data set."""

    dataset_name = "reidfolder"

    def __init__(self, root=None, cfg=None, combineall=False, verbose=True, **kwargs):
        # root: fastreid's data root (FASTREID_DATASETS), which this data set does not use
        self.settings = settings_of(cfg if cfg is not None else _config.get())
        self.read_images, self.folders = find_layout(self.settings.root)
        self.train_dir, self.query_dir, self.gallery_dir = (self.folders[r] for r in ("train", "query", "gallery"))
        self.dataset_dir = self.settings.root
        self.held_back = self.folders["query"] is None and self.folders["gallery"] is None \
            and self.settings.test_ids is not None
        if self.settings.test_ids is not None and not self.held_back:
            raise InputError(f"DATASETS.FOLDER.TEST_IDS is set, but {self.settings.root} has its own query and gallery "
                             "folders: TEST_IDS holds identities back from a folder with a training split alone. "
                             "Remove DATASETS.FOLDER.TEST_IDS, or the query and gallery folders.")
        self._split, self._test = None, None
        # Dataset.__init__ restated without its `self.data = self.train`: each split is read when first used, so that
        # a folder used only for testing needs no training split, nor one used only for training a query and gallery
        self._train = self._training_rows
        self._query, self._gallery = (lambda: self._test_rows()[0]), (lambda: self._test_rows()[1])
        self.transform, self.mode, self.combineall, self.verbose = None, "train", combineall, verbose
        if combineall:
            self.combine_all()

    @property
    def data(self):
        return self.train

    def _split_folder(self, role):
        folder = self.folders[role]
        if folder is None:
            hint = (" (or, for a folder with a training split alone, set DATASETS.FOLDER.TEST_IDS to hold identities "
                    "back from it as query and gallery)") if role != "train" else ""
            expected = os.path.join(self.settings.root, IDENTITY_SPLITS[role])
            raise DatasetNotFoundError(f"ReidFolder: {self.settings.root} has no {role} split: add "
                                       f"{expected}/<identity>/...{hint}.")
        images = self.read_images(folder)
        check_split_not_empty(images, folder, role)
        return images

    def _training_split(self):
        images = self._split_folder("train")
        check_cameras_given_alike(images, f"the training split {self.train_dir}")
        check_training_identities(images, self.train_dir)
        return images

    def _training_rows(self):
        images = self._held_back_split()[0] if self.held_back else self._training_split()
        return training_items(images, self.train_dir, self.dataset_name)

    def _test_rows(self):
        if self._test is None:
            if self.held_back:
                _, query, gallery = self._held_back_split()
                folders = {"query": self.train_dir, "gallery": self.train_dir}
            else:
                query, gallery = self._split_folder("query"), self._split_folder("gallery")
                folders = self.folders
                check_cameras_given_alike(query + gallery, f"the query and gallery of {self.settings.root}")
            check_queries(query, gallery, folders)
            logger.info("ReidFolder %s: %s", self.settings.root, camera_rule(query + gallery))
            self._test = test_items(query, gallery, folders)
        return self._test

    def _held_back_split(self):
        """``(train, query, gallery)`` images of a training split alone: the split file's, or made now and held for
        OUTPUT_DIR, where it is written with config.yaml once the training run's checks have passed."""
        from ..engine.output_dir import write_after_checks  # the engine imports the data package

        if self._split is not None:
            return self._split
        images = self._training_split()
        output_dir = self.settings.output_dir
        path = os.path.join(output_dir, SPLIT_FILE) if output_dir else None
        split = reuse_split(path, self.settings, images) if path else None
        if split is not None:
            logger.info("ReidFolder: reusing the split of %s", path)
        else:
            split = held_back_split(images, self.settings.test_ids, self.settings.seed, self.train_dir)
            if path:
                write_after_checks(output_dir, SPLIT_FILE,
                                   json.dumps(split_record(self.settings, images, *split[1:]), indent=1) + "\n")
        _, query, gallery = split
        logger.info("ReidFolder: %d of %d identities of %s held back as query (%d images) and gallery (%d images) "
                    "(DATASETS.FOLDER.TEST_IDS %r, SEED %d)", len({q.identity for q in query}),
                    len(by_identity(images)), self.train_dir, len(query), len(gallery), self.settings.test_ids,
                    self.settings.seed)
        self._split = split
        return split
