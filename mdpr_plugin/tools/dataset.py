"""mdpr-dataset: a ReidFolder dataset (mdpr_plugin/data/folder.py) made from one's own footage, with no code.

    mdpr-dataset from-mot SEQUENCE_DIR... --output ROOT [--classes 1] [--min-visibility 0.5] [--min-height 32]
                 [--min-width 8] [--every 5] [--test-ids 0.2] [--seed 0] [--keep-ignored]

``from-mot`` reads MOTChallenge-format sequences (MOT17, MOT20, DanceTrack): ``SEQ/img1/<frame>.jpg`` and
``SEQ/gt/gt.txt`` rows ``frame,id,x,y,w,h,conf,class,visibility``, with ``SEQ/seqinfo.ini`` where present (imDir,
imExt, seqLength, frameRate). Every kept box becomes a crop (clipped to the frame) of the identity (sequence, track
id), written to ``ROOT/{train,query,gallery}/<sequence>_<track>/[c<k>/]<frame>.jpg``; identities are held back for
query and gallery by ReidFolder's rule (``held_back_split``), the sequence is the camera ``c<k>`` of the training
crops where several sequences are given. docs/own-data.md gives the options, defaults and the layout.

A rerun with the same inputs and options writes only the crops not yet there (``ROOT/mdpr_dataset.json`` records
what the folder was made from); each crop is written to a temporary file in its folder and renamed, so an
interrupted run never leaves half an image.
"""
import argparse
import configparser
import hashlib
import json
import logging
import math
import os
from collections import Counter, defaultdict
from dataclasses import dataclass

from ..data.folder import Image as FolderImage, held_back_split
from ..data.images import IMAGE_FILE_SUFFIXES, read_image
from ..errors import InputError, MissingFileError, reporting_errors
from ..evaluation.progress import Progress
from ..output_files import PARTIAL_FILE, atomic_open
from ..resources import resource_failures_explained
from .common import check_output_folder, positive_int, setup_tool_logging

logger = logging.getLogger(__name__)

PROG = "mdpr-dataset"
MANIFEST = "mdpr_dataset.json"
GT_COLUMNS = ("frame", "id", "x", "y", "w", "h", "conf", "class", "visibility")
JPEG_QUALITY = 95
DEFAULTS = {"classes": [1], "min_visibility": 0.5, "min_height": 32, "min_width": 8, "every": 5, "test_ids": 0.2,
            "seed": 0, "keep_ignored": False}


# ------------------------------------------------------------------------------------------- gt.txt
@dataclass(frozen=True)
class Box:
    frame: int
    track: int
    x: float
    y: float
    w: float
    h: float
    conf: float
    cls: int
    visibility: float
    line: int


def _malformed(path, number, text, problem):
    return InputError(f"{path}:{number}: {problem} in {text.strip()!r}; a gt.txt row is {','.join(GT_COLUMNS)} "
                      "(MOTChallenge's format), e.g. 1,3,794.2,47.5,71.2,174.8,1,1,0.8. Fix or remove that line.")


def _whole(value):
    return math.isfinite(value) and value == int(value)


def parse_gt_line(text, path, number):
    """One gt.txt line as a :class:`Box` (None for a blank line), or an InputError naming the file and line."""
    fields = [field.strip() for field in text.strip().split(",")]
    if fields == [""]:
        return None
    if fields[-1] == "" and len(fields) == len(GT_COLUMNS) + 1:
        fields = fields[:-1]  # a trailing comma
    if len(fields) != len(GT_COLUMNS):
        raise _malformed(path, number, text, f"{len(fields)} values, not {len(GT_COLUMNS)}")
    try:
        values = [float(field) for field in fields]
    except ValueError:
        raise _malformed(path, number, text, "a value that is not a number") from None
    if not all(math.isfinite(v) for v in values):
        raise _malformed(path, number, text, "a value that is not finite")
    frame, track, x, y, w, h, conf, cls, visibility = values
    if not (_whole(frame) and frame >= 1):
        raise _malformed(path, number, text, f"frame {fields[0]} (frames are whole numbers from 1)")
    if not (_whole(track) and track >= 0):
        raise _malformed(path, number, text, f"track id {fields[1]} (ids are whole numbers >= 0; det.txt rows, with id "
                                             "-1, are detections, not ground truth)")
    if not _whole(cls):
        raise _malformed(path, number, text, f"class {fields[7]} (a whole number)")
    return Box(int(frame), int(track), x, y, w, h, conf, int(cls), visibility, number)


def read_gt(path):
    """The boxes of a gt.txt, in file order."""
    try:
        with open(path, newline="") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path} could not be read ({getattr(error, 'strerror', None) or error}).") from None
    return [box for number, text in enumerate(lines, 1) if (box := parse_gt_line(text, path, number)) is not None]


# ------------------------------------------------------------------------------------------- sequences
@dataclass(frozen=True)
class Sequence:
    folder: str
    name: str
    image_dir: str
    image_ext: str
    length: int  # 0: not given
    frame_rate: float  # 0: not given
    gt_path: str
    gt_sha256: str


def read_seqinfo(folder):
    """``seqinfo.ini``'s [Sequence] section as a dict (empty without the file)."""
    path = os.path.join(folder, "seqinfo.ini")
    if not os.path.isfile(path):
        return {}
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path)
    except configparser.Error as error:
        raise InputError(f"{path} could not be read as an ini file ({error.message.splitlines()[0]}); fix it or remove "
                         "it (imDir img1 and imExt .jpg are then assumed).") from None
    return dict(parser["Sequence"]) if parser.has_section("Sequence") else {}


def _number(info, key, kind, path):
    try:
        return kind(info[key.lower()]) if key.lower() in info else 0
    except ValueError:
        raise InputError(f"{path}: {key} {info[key.lower()]!r} is not a number; fix it in the file.") from None


def read_sequence(folder):
    """A MOTChallenge sequence folder, checked: its gt.txt and image folder there."""
    folder = os.path.abspath(folder)
    if not os.path.isdir(folder):
        raise MissingFileError(f"sequence folder {folder} does not exist")
    info = read_seqinfo(folder)
    ini = os.path.join(folder, "seqinfo.ini")
    gt_path = os.path.join(folder, "gt", "gt.txt")
    if not os.path.isfile(gt_path):
        raise MissingFileError(f"{folder} has no gt/gt.txt: from-mot reads the ground truth of MOTChallenge-format "
                               "sequences (SEQ/img1/<frame>.jpg and SEQ/gt/gt.txt); a test sequence without gt cannot "
                               "be used")
    image_dir = os.path.join(folder, info.get("imdir", "img1"))
    if not os.path.isdir(image_dir):
        raise MissingFileError(f"{folder} has no image folder {os.path.basename(image_dir)}/ (seqinfo.ini's imDir, "
                               "img1 by default)")
    with open(gt_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return Sequence(folder, info.get("name") or os.path.basename(folder), image_dir, info.get("imext", ".jpg"),
                    _number(info, "seqLength", int, ini), _number(info, "frameRate", float, ini), gt_path, digest)


def frame_files(sequence):
    """``{frame number: image path}`` of the sequence's image folder (``000001.jpg``, DanceTrack's ``00000001.jpg``)."""
    frames = {}
    for name in os.listdir(sequence.image_dir):
        stem, suffix = os.path.splitext(name)
        if stem.isdigit() and suffix.lower() == sequence.image_ext.lower() and suffix.lower() in IMAGE_FILE_SUFFIXES:
            frames[int(stem)] = os.path.join(sequence.image_dir, name)
    return frames


def distinct_sequences(sequences):
    """The sequences with the same gt.txt left out but the first (MOT17 gives each sequence three times, once per
    public detector, with one ground truth); two different sequences of one name refused (their identities would
    be one)."""
    kept, seen = [], {}
    for sequence in sequences:
        if sequence.gt_sha256 in seen:
            logger.warning("%s has the same gt.txt as %s: left out (its crops would repeat those identities).",
                           sequence.folder, seen[sequence.gt_sha256])
            continue
        same_name = [other for other in kept if other.name == sequence.name]
        if same_name:
            raise InputError(f"two sequences are named {sequence.name} ({same_name[0].folder} and {sequence.folder}): "
                             "identities are named <sequence>_<track id>, so they would mix; give one of them.")
        seen[sequence.gt_sha256] = sequence.folder
        kept.append(sequence)
    return kept


# ------------------------------------------------------------------------------------------- filters
@dataclass(frozen=True)
class Filters:
    classes: tuple
    keep_ignored: bool
    min_visibility: float
    min_height: int
    min_width: int
    every: int


def clipped_box(box, width, height):
    """``(x1, y1, x2, y2)`` of ``box`` rounded to whole pixels and clipped to the ``width`` x ``height`` frame."""
    x1, y1 = max(0, round(box.x)), max(0, round(box.y))
    x2, y2 = min(width, round(box.x + box.w)), min(height, round(box.y + box.h))
    return x1, y1, max(x1, x2), max(y1, y2)


def rejection(box, filters, width, height):
    """Why ``box`` is not made a crop (None: it is): the first filter it fails."""
    if box.cls not in filters.classes:
        return "class"
    if box.conf == 0 and not filters.keep_ignored:
        return "ignored (conf 0)"
    if 0 <= box.visibility < filters.min_visibility:  # a negative visibility: not given
        return "visibility"
    if (box.frame - 1) % filters.every:
        return "frame step"
    x1, y1, x2, y2 = clipped_box(box, width, height)
    if y2 - y1 < filters.min_height or x2 - x1 < filters.min_width:
        return "size"
    return None


# ------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Crop:
    sequence: int  # index into the sequences
    frame: int
    box: tuple  # clipped x1, y1, x2, y2
    identity: str
    path: str = ""  # relative to the output folder, once the split is known


def identity_name(sequence, track):
    return f"{sequence.name}_{track:05d}"


def frame_size(sequence, frames):
    from PIL import Image

    first = frames[min(frames)]
    try:
        with Image.open(first) as image:
            return image.size
    except OSError as error:
        raise InputError(f"{first} could not be read as an image ({error}); replace it.") from None


def sequence_crops(index, sequence, filters):
    """The crops of one sequence, and the count of rows each filter left out."""
    boxes = read_gt(sequence.gt_path)
    frames = frame_files(sequence)
    if not frames:
        raise MissingFileError(f"{sequence.image_dir} holds no frame image named <frame number>{sequence.image_ext}")
    width, height = frame_size(sequence, frames)
    crops, left_out = [], Counter()
    for box in boxes:
        if sequence.length and box.frame > sequence.length:
            raise InputError(f"{sequence.gt_path}:{box.line}: frame {box.frame} is past the sequence's seqLength "
                             f"{sequence.length} (seqinfo.ini); fix the line or seqinfo.ini.")
        reason = rejection(box, filters, width, height)
        if reason:
            left_out[reason] += 1
            continue
        if box.frame not in frames:
            raise MissingFileError(f"{sequence.gt_path}:{box.line}: frame {box.frame} has no image in "
                                   f"{sequence.image_dir} (<frame number>{sequence.image_ext})")
        crops.append(Crop(index, box.frame, clipped_box(box, width, height), identity_name(sequence, box.track)))
    logger.info("%s: %d of %d gt rows kept%s", sequence.name, len(crops), len(boxes),
                "".join(f", {count} left out by {reason}" for reason, count in sorted(left_out.items())))
    return crops


def by_identity(crops):
    """``{identity: crops in frame order}``; identities with one crop left out (ReidFolder trains on 2 or more)."""
    grouped = defaultdict(list)
    for crop in crops:
        grouped[crop.identity].append(crop)
    grouped = {name: sorted(found, key=lambda c: c.frame) for name, found in sorted(grouped.items())}
    single = [name for name, found in grouped.items() if len(found) < 2]
    if single:
        logger.info("%d tracks with a single crop left out (an identity needs 2 or more), e.g. %s", len(single),
                    single[0])
    return {name: found for name, found in grouped.items() if len(found) >= 2}


def split_identities(identities, test_ids, seed):
    """``{identity: {crop: "train" | "query" | "gallery"}}`` by ReidFolder's held-back rule, each crop its own camera
    (one image per held-back identity as query, its earliest; the rest gallery); ``test_ids`` 0: all train."""
    roles = {}
    images = [FolderImage(f"{name}/{crop.frame:08d}", name, None)
              for name, found in identities.items() for crop in found]
    if test_ids:
        _, query, gallery = held_back_split(images, test_ids, seed, "the tracks kept", option="--test-ids")
    else:
        query, gallery = [], []
    role_of = {image.path: "query" for image in query} | {image.path: "gallery" for image in gallery}
    for name, found in identities.items():
        roles[name] = {crop: role_of.get(f"{name}/{crop.frame:08d}", "train") for crop in found}
    return roles


def plan(sequences, filters, test_ids, seed):
    """Every crop to write, with its path under the output folder."""
    crops = [crop for index, sequence in enumerate(sequences) for crop in sequence_crops(index, sequence, filters)]
    identities = by_identity(crops)
    if len(identities) < 2:
        raise InputError(f"{len(identities)} identities with 2 or more crops are left after the filters (of "
                         f"{len({c.identity for c in crops})} tracks): a dataset needs more. Loosen the filters "
                         "(--every, --min-visibility, --min-height, --min-width, --classes) or give more sequences.")
    cameras = len(sequences) > 1
    planned = []
    for name, roles in split_identities(identities, test_ids, seed).items():
        for crop, role in roles.items():
            camera = f"c{crop.sequence + 1}/" if cameras and role == "train" else ""
            path = f"{role}/{name}/{camera}{crop.frame:06d}.jpg"
            planned.append(Crop(crop.sequence, crop.frame, crop.box, name, path))
    return planned


# ------------------------------------------------------------------------------------------- the output
def manifest_of(sequences, options):
    return {"made_by": f"{PROG} from-mot", "sequences": [{"name": s.name, "gt_sha256": s.gt_sha256, "folder": s.folder}
                                                       for s in sequences], "options": options}


def _same_inputs(recorded, manifest):
    inputs = lambda m: ([(s["name"], s["gt_sha256"]) for s in m.get("sequences", [])], m.get("options"))  # noqa: E731
    return inputs(recorded) == inputs(manifest)


def _write_json(path, data):
    with atomic_open(path, "w", "--output") as f:
        json.dump(data, f, indent=1)
        f.write("\n")


def open_output(root, manifest):
    """Make ``root`` for ``manifest``'s dataset, or find it there from an earlier run of the same inputs and options;
    anything else already in ``root`` is refused. Returns True when resuming."""
    path = os.path.join(root, MANIFEST)
    entries = [name for name in os.listdir(root)] if os.path.isdir(root) else []
    if os.path.isfile(path):
        try:
            with open(path) as f:
                recorded = json.load(f)
        except (OSError, ValueError) as error:
            raise InputError(f"--output {root}: {path} could not be read ({error}); remove the folder to make the "
                             "dataset again, or give another --output.") from None
        if not _same_inputs(recorded, manifest):
            raise InputError(f"--output {root} holds a dataset made from other sequences or options (see {path}); give "
                             "another --output, or remove that folder to make it again.")
        return True
    if entries:
        raise InputError(f"--output {root} already holds other files ({', '.join(sorted(entries)[:3])}"
                         f"{', ...' if len(entries) > 3 else ''}); give a new or empty folder.")
    os.makedirs(root, exist_ok=True)
    _write_json(path, dict(manifest, complete=False))
    return False


def remove_partial_crops(root):
    """The temporary files an interrupted run left (``<crop>.jpg.tmp<pid>``: ReidFolder does not read them either)."""
    removed = 0
    for folder, _, names in os.walk(root):
        for name in names:
            if PARTIAL_FILE.search(name):
                os.remove(os.path.join(folder, name))
                removed += 1
    if removed:
        logger.info("Removed %d partly written crops of an interrupted run", removed)


def save_crop(image, path):
    """``image`` as a JPEG at ``path``, through a temporary file renamed over it."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_open(path, "wb", "--output") as f:
        image.save(f, format="JPEG", quality=JPEG_QUALITY)


def write_crops(root, crops, sequences):
    """The crops not yet in ``root``, frame by frame (each frame decoded once); returns how many were written."""
    missing = defaultdict(list)
    for crop in crops:
        if not os.path.isfile(os.path.join(root, crop.path)):
            missing[crop.sequence, crop.frame].append(crop)
    total = sum(len(found) for found in missing.values())
    logger.info("%d crops to write into %s (%d already there)", total, root, len(crops) - total)
    progress, done = Progress("writing crops", total, logger), 0
    frames = {}
    for (index, frame), found in sorted(missing.items()):
        if index not in frames:
            frames = {index: frame_files(sequences[index])}  # one sequence's listing at a time
        image = read_image(frames[index][frame])
        for crop in found:
            save_crop(image.crop(crop.box), os.path.join(root, crop.path))
        done += len(found)
        progress.update(done)
    progress.done()
    return total


def from_mot(args):
    filters = Filters(tuple(args.classes), args.keep_ignored, args.min_visibility, args.min_height, args.min_width,
                      args.every)
    sequences = distinct_sequences([read_sequence(folder) for folder in args.sequences])
    options = {"classes": list(filters.classes), "keep_ignored": filters.keep_ignored,
               "min_visibility": filters.min_visibility, "min_height": filters.min_height,
               "min_width": filters.min_width, "every": filters.every, "test_ids": args.test_ids, "seed": args.seed}
    check_output_folder(args.output, "--output")
    crops = plan(sequences, filters, args.test_ids, args.seed)  # all inputs read and checked before writing
    manifest = manifest_of(sequences, options)
    resuming = open_output(args.output, manifest)
    if resuming:
        remove_partial_crops(args.output)
    written = write_crops(args.output, crops, sequences)
    _write_json(os.path.join(args.output, MANIFEST), dict(manifest, crops=len(crops), complete=True))
    return crops, written


# ------------------------------------------------------------------------------------------- CLI
def test_ids_value(text):
    """An argparse type: 0, a fraction 0 < x < 1, or a whole count >= 1."""
    for kind, allowed in ((int, lambda v: v >= 0), (float, lambda v: 0 < v < 1)):
        try:
            value = kind(text)
        except ValueError:
            continue
        if allowed(value):
            return value
        break
    raise argparse.ArgumentTypeError(f"{text!r} is neither 0, a fraction between 0 and 1 nor a whole count >= 1")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description="Make a ReidFolder dataset (DATASETS.NAMES "
                                                            "(\"ReidFolder\",)) from your own footage.")
    commands = parser.add_subparsers(dest="command", required=True)
    mot = commands.add_parser("from-mot", help="crops of the ground truth of MOTChallenge-format sequences",
                              description="Crops of the ground-truth boxes of MOTChallenge-format sequences (SEQ/img1, "
                                          "SEQ/gt/gt.txt), one identity per (sequence, track id).")
    mot.add_argument("sequences", nargs="+", metavar="SEQUENCE_DIR", help="sequence folders (holding img1/ and gt/)")
    mot.add_argument("--output", required=True, metavar="ROOT",
                     help="the dataset folder to write (DATASETS.FOLDER.ROOT)")
    mot.add_argument("--classes", type=int, nargs="+", default=DEFAULTS["classes"], metavar="CLASS",
                     help="gt classes kept (default 1, MOTChallenge's pedestrian)")
    mot.add_argument("--keep-ignored", action="store_true",
                     help="keep rows with conf 0, which MOT17's gt marks as to be ignored (default: left out)")
    mot.add_argument("--min-visibility", type=float, default=DEFAULTS["min_visibility"],
                     help="the smallest visible fraction kept (default 0.5; a negative visibility counts as not given)")
    mot.add_argument("--min-height", type=positive_int, default=DEFAULTS["min_height"],
                     help="the smallest crop height kept, in pixels, after clipping to the frame (default 32)")
    mot.add_argument("--min-width", type=positive_int, default=DEFAULTS["min_width"],
                     help="the smallest crop width kept, in pixels, after clipping (default 8)")
    mot.add_argument("--every", type=positive_int, default=DEFAULTS["every"], metavar="N",
                     help="keep frames 1, 1+N, 1+2N, ... (default 5: neighbouring frames are near duplicates)")
    mot.add_argument("--test-ids", type=test_ids_value, default=DEFAULTS["test_ids"], metavar="X",
                     help="identities held back for query and gallery: a fraction 0 < X < 1 of them or a count >= 1; "
                          "0: none, all train (default 0.2)")
    mot.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="the seed that draws them (default 0)")
    return parser.parse_args(argv)


def main(argv=None):
    setup_tool_logging()
    args = parse_args(argv)
    with reporting_errors(PROG), resource_failures_explained(
            f"{PROG} {args.command}", "the frames' size (each frame is decoded whole)"):
        crops, written = from_mot(args)
    roles = Counter(crop.path.split("/", 1)[0] for crop in crops)
    identities = {role: len({c.identity for c in crops if c.path.startswith(role + "/")}) for role in roles}
    print(f"{args.output}: {len(crops)} crops ({written} written now, {len(crops) - written} already there) of "
          + ", ".join(f"{identities[r]} {r} identities ({roles[r]} crops)" for r in ("train", "query", "gallery")
                      if r in roles))
    tests = " DATASETS.TESTS \"('ReidFolder',)\"" if "query" in roles else ""
    print(f"Train on it: train_net.py --config-file configs/MDPR/demo.yml DATASETS.NAMES \"('ReidFolder',)\"{tests} "
          f"DATASETS.FOLDER.ROOT {args.output}")


if __name__ == "__main__":
    main()
