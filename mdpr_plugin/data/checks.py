"""Checks on a data set before anything trains or evaluates on it.

fastreid builds whatever it finds: a folder in the wrong layout gives an empty set (Market1501 globs
``*.jpg`` and silently finds none) and, with an identity sampler, a training loop that waits forever
for a first batch; an unreadable image stops the run when it is first drawn, possibly hours in, with
PIL's message that does not name the file. Each check here fails at once, naming the folder, file or
config key and the fix.
"""
import contextlib
import logging
import os
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import InputError, MissingFileError
from .images import BAD_IMAGE_FIX, IMAGE_FILE_SUFFIXES, BadImageError, check_regular_file, inspect_image

logger = logging.getLogger(__name__)

BAD_IMAGE_POLICIES = ("error", "skip")
IDENTITY_SAMPLERS = ("NaiveIdentitySampler", "BalancedIdentitySampler")


class DatasetNotFoundError(MissingFileError):
    """A dataset folder (or one of its sub-folders) is missing."""


class DatasetLayoutError(InputError):
    """A dataset folder that exists but does not hold what its dataset class reads."""


class DataConfigError(InputError):
    """A DATALOADER value the data cannot be loaded with."""


class SamplingError(DataConfigError):
    """A training set the configured sampler cannot draw a single batch from."""


# ------------------------------------------------------------------------------------------ layout
_LAYOUTS = {
    "Market1501": "bounding_box_train/, query/ and bounding_box_test/, each holding .jpg files directly (no "
                  "sub-folders) named <person id>_c<camera 1-6>s<sequence>_<frame>_<box>.jpg, e.g. "
                  "0002_c1s1_000451_03.jpg",
    "DukeMTMC": "bounding_box_train/, query/ and bounding_box_test/, each holding .jpg files directly (no "
                "sub-folders) named <person id>_c<camera 1-8>_f<frame>.jpg, e.g. 0001_c2_f0046182.jpg",
    "SynergyReID": "synergyreid_data/ (or the datasets folder itself) holding reid_training/, reid_test/query/ and "
                   "reid_test/gallery/, each holding .jpeg files directly whose name starts with <person id>_<digit>, "
                   "e.g. 12_3_001.jpeg",
}
_FOLDER_ATTRIBUTES = {"train": "train_dir", "query": "query_dir", "gallery": "gallery_dir"}


def expected_layout(dataset):
    for cls in type(dataset).__mro__:
        if cls.__name__ in _LAYOUTS:
            return _LAYOUTS[cls.__name__]
    source = getattr(sys.modules.get(type(dataset).__module__), "__file__", type(dataset).__module__)
    return f"the layout {type(dataset).__name__}.process_dir reads (see {source})"


def describe_folder(folder):
    """What a folder holds, in the terms a layout mistake shows up in."""
    if not os.path.isdir(folder):
        return f"{folder} does not exist"
    entries = os.listdir(folder)
    subfolders = sorted(e for e in entries if os.path.isdir(os.path.join(folder, e)))
    extensions = Counter(os.path.splitext(e)[1].lower() or "(no extension)"
                         for e in entries if os.path.isfile(os.path.join(folder, e)))
    if not entries:
        return f"{folder} is empty"
    parts = [f"{count} {ext} files" for ext, count in extensions.most_common(4)]
    if subfolders:
        parts.append(f"{len(subfolders)} sub-folders (e.g. {subfolders[0]}/)")
    return f"{folder} holds {', '.join(parts)}"


def check_not_empty(name, dataset, role, items):
    """Refuse an empty train, query or gallery set, naming the folder it was read from."""
    if items:
        return
    folder = getattr(dataset, _FOLDER_ATTRIBUTES[role], None) or dataset.dataset_dir
    raise DatasetLayoutError(
        f"{name}: the {role} set is empty: no image found in {folder} ({describe_folder(folder)}). "
        f"{name} expects {expected_layout(dataset)}.")


def _missing_folder_error(dataset, path, required):
    import fastreid.data.build as data_build

    name = type(dataset).__name__
    error = DatasetNotFoundError(
        f"{name}: {path} not found (absolute: {os.path.abspath(path)}). The dataset needs: {', '.join(required)}. "
        f"fastreid looks for datasets under FASTREID_DATASETS (here {data_build._root!r}, relative to the working "
        f"directory {os.getcwd()}); set it to the folder that holds the dataset before starting.")
    # images lying in the dataset folder itself: say where they go
    folder = getattr(dataset, "data_dir", None)
    entries = os.listdir(folder) if folder and os.path.isdir(folder) else []
    images = sorted(e for e in entries if e.lower().endswith((".jpg", ".jpeg", ".png")))
    if images:
        error = DatasetNotFoundError(f"{error} {folder} holds {len(images)} images directly (e.g. {images[0]}): "
                                     "they belong in the train / query / gallery sub-folders named above.")
    return error


def _innermost_dataset_frame(error):
    """The locals of the innermost traceback frame that ran a method of a fastreid ``Dataset``."""
    from fastreid.data.datasets.bases import Dataset

    found, tb = None, error.__traceback__
    while tb is not None:
        if isinstance(tb.tb_frame.f_locals.get("self"), Dataset):
            found = tb.tb_frame.f_locals
        tb = tb.tb_next
    return found or {}


@contextlib.contextmanager
def explained_dataset_errors():
    """Re-raise what fastreid's dataset classes raise for a wrong folder as errors that name it and the fix.

    A missing folder is fastreid's ``RuntimeError('"x" is not found')`` (data/datasets/bases.py:139); a
    file name ``process_dir`` cannot parse is an AttributeError on a failed regex match or a failed
    assertion on the id ranges (e.g. datasets/market1501.py:74). The dataset, the folder and the file are
    still in the failing frame.
    """
    try:
        yield
    except RuntimeError as error:
        frame = _innermost_dataset_frame(error)
        if "fpath" not in frame or "required_files" not in frame:
            raise
        raise _missing_folder_error(frame["self"], frame["fpath"], frame["required_files"]) from None
    except (AttributeError, AssertionError) as error:
        frame = _innermost_dataset_frame(error)
        if "img_path" not in frame:
            raise
        dataset, name = frame["self"], type(frame["self"]).__name__
        raise DatasetLayoutError(
            f"{name}: cannot parse the file name {frame['img_path']} in {frame.get('dir_path')}. {name} expects "
            f"{expected_layout(dataset)}. Rename or move the files that do not fit.") from error


def check_folder_not_read_as_ids(name, root):
    """Refuse a dataset folder whose path fastreid's own class would read as every image's person id and camera.

    Some of fastreid's classes take the id and camera from the first match of their pattern in the whole image
    path, ``<root>/<dataset_dir>/<fixed split names>/<file>``: a match in ``<root>/<dataset_dir>`` is then what
    every image gets. Checked before the set is built, which would pass as one identity or fail on an id.
    """
    from fastreid.data.datasets import DATASET_REGISTRY, DukeMTMC, Market1501, VeRi, cuhkSYSU

    dataset = DATASET_REGISTRY.get(name)
    whole_path_patterns = {Market1501: r"[-\d]+_c\d", DukeMTMC: r"[-\d]+_c\d", VeRi: r"\d+_c\d\d\d",
                           cuhkSYSU: r"p[-\d]+_s\d"}  # as in their process_dir
    for fastreid_class, pattern in whole_path_patterns.items():
        # a subclass with its own folders or its own parsing is not concerned
        if not issubclass(dataset, fastreid_class) or (dataset.__init__, dataset.process_dir) != (
                fastreid_class.__init__, fastreid_class.process_dir):
            continue
        folder = os.path.join(root, dataset.dataset_dir)
        found = re.findall(pattern, folder)
        if found:
            raise DatasetLayoutError(
                f"{name}: the dataset folder {folder} has {' and '.join(map(repr, found))} in its path, and fastreid's "
                f"{fastreid_class.__name__} reads the person id and camera from the whole image path, not the file "
                f"name: every image would get those of {found[0]!r}. Move or rename the folder so that its path has "
                "no such text (and set FASTREID_DATASETS to the new place).")


# ------------------------------------------------------------------------------------------ images
_inspected = {}  # (path, mtime_ns, size) -> (width, height) or the error: evaluation rebuilds its set each time


def _inspect(path):
    try:
        stat = os.stat(path)
    except OSError as error:
        return path, BadImageError(f"{path} could not be read ({error}). {BAD_IMAGE_FIX}", path=path, reason=str(error))
    check_regular_file(path, stat)  # by its type, before it is opened: a FIFO would block its reader forever
    key = (path, stat.st_mtime_ns, stat.st_size)
    if key not in _inspected:
        try:
            _inspected[key] = inspect_image(path)
        except BadImageError as error:
            _inspected[key] = error
    return path, _inspected[key]


def check_images(items, description, policy, input_size, threads=None):
    """Decode every image of ``items`` once; return ``(items to keep, number left out)``.

    ``policy`` (DATALOADER.BAD_IMAGES): "error" stops naming the unreadable files, "skip" leaves them out
    with a warning giving their number. Images more than 4x smaller than ``input_size`` (height,
    width) in a side are kept (they are upscaled, as real detector crops often must be) with a warning. A FIFO,
    socket, device or folder under an image's name is refused whatever the policy, by its type, unopened.
    """
    if policy not in BAD_IMAGE_POLICIES:
        raise DataConfigError(f"DATALOADER.BAD_IMAGES must be one of {BAD_IMAGE_POLICIES}, got {policy!r}.")
    threads = threads or min(8, os.cpu_count() or 1)  # PIL decodes without the GIL
    with ThreadPoolExecutor(threads) as pool:
        results = dict(pool.map(_inspect, sorted({item[0] for item in items})))

    bad = [result for result in results.values() if isinstance(result, BadImageError)]
    if bad and (policy == "error" or len(bad) == len(results)):  # skipping all would leave an empty set
        listed = "".join(f"\n  {error.path} ({error.reason})" for error in bad[:5])
        more = f"\n  ... and {len(bad) - 5} more" if len(bad) > 5 else ""
        fix = BAD_IMAGE_FIX if policy == "error" else "None is left to skip: check the files (a failed copy?)."
        raise BadImageError(f"{len(bad)} of {len(results)} images of {description} could not be read:"
                            f"{listed}{more}\n{fix}", path=bad[0].path, reason=bad[0].reason)
    if bad:
        logger.warning("DATALOADER.BAD_IMAGES skip: left out %d unreadable images of %s (of %d), e.g. %s (%s)",
                       len(bad), description, len(results), bad[0].path, bad[0].reason)
        unreadable = {error.path for error in bad}
        items = [item for item in items if item[0] not in unreadable]

    height, width = input_size
    tiny = [(path, size) for path, size in results.items()
            if not isinstance(size, BadImageError) and (size[0] * 4 < width or size[1] * 4 < height)]
    if tiny:
        path, (w, h) = tiny[0]
        logger.warning("%d images of %s are more than 4x smaller than the input size %dx%d (e.g. %s, %dx%d); "
                       "they are upscaled, which blurs them.", len(tiny), description, width, height, path, w, h)
    return items, len(bad)


def _left_out_images(folder, read_suffixes):
    """``{suffix: [file names]}`` of the image files in ``folder`` whose suffix is none of ``read_suffixes``
    (exact case: a glob of ``*.jpg`` does not find ``x.JPG``)."""
    left_out = {}
    for name in sorted(os.listdir(folder)):
        suffix = os.path.splitext(name)[1]
        if suffix.lower() in IMAGE_FILE_SUFFIXES and suffix not in read_suffixes:
            left_out.setdefault(suffix, []).append(name)
    return dict(sorted(left_out.items()))


def warn_images_not_read(items, description):
    """Warn, naming the folders and the counts, about image files next to the images of ``items`` that the
    dataset class did not read: fastreid's classes glob one suffix (Market1501 ``*.jpg``, case-sensitive), so
    ``.JPG``, ``.jpeg`` or ``.png`` files beside them were left out of training and evaluation silently. Files
    of a read suffix the class skipped on purpose (Market-1501's junk images, id -1) are not counted."""
    read = {}
    for item in items:
        folder, name = os.path.split(item[0])
        read.setdefault(folder, set()).add(os.path.splitext(name)[1])
    found = {folder: _left_out_images(folder, suffixes) for folder, suffixes in sorted(read.items())}
    found = {folder: left_out for folder, left_out in found.items() if left_out}
    if not found:
        return
    total = sum(len(names) for left_out in found.values() for names in left_out.values())
    places = [f"{folder}: {', '.join(f'{len(names)} {suffix}' for suffix, names in left_out.items())} "
              f"(e.g. {next(iter(left_out.values()))[0]}), next to its {'/'.join(sorted(read[folder]))} files"
              for folder, left_out in list(found.items())[:3]]
    more = f"; and {len(found) - 3} more folders" if len(found) > 3 else ""
    logger.warning("%d image files were not read into %s: %s%s. The dataset class reads only the suffixes it "
                   "globs, case-sensitively: rename or convert these files to one of those to use them.",
                   total, description, "; ".join(places), more)


# --------------------------------------------------------------------------------------- sampling
def triplet_loss_used(cfg):
    """Whether training computes a triplet loss: MODEL.LOSSES.NAME names TripletLoss (MDPR reads it as fastreid's
    meta-architectures do) and MODEL.LOSSES.TRI.SCALE is not 0."""
    return bool(cfg.MODEL.LOSSES.TRI.SCALE) and "TripletLoss" in cfg.MODEL.LOSSES.NAME


def _fewest_instances(sampler_name, triplet):
    """The fewest images of each identity a batch may hold: two for a triplet loss (a positive pair)."""
    return 2 if triplet and sampler_name in IDENTITY_SAMPLERS else 1


def batch_that_fits(sampler_name, ims_per_batch, num_instance, world_size, triplet):
    """``(SOLVER.IMS_PER_BATCH, DATALOADER.NUM_INSTANCE)`` nearest to the given ones (the batch no larger unless it
    must grow) that every batch check passes: divisible over the processes, whole identities per process, at least
    two identities per process, and two images of each under a triplet loss."""
    instances = max(num_instance, _fewest_instances(sampler_name, triplet)) if sampler_name in IDENTITY_SAMPLERS else 1
    step = world_size * instances
    return max(ims_per_batch // step * step, 2 * step), instances if sampler_name in IDENTITY_SAMPLERS else num_instance


def _fewer_instances_that_fit(sampler_name, per_process, triplet):
    """The largest DATALOADER.NUM_INSTANCE that splits ``per_process`` images into two or more identities, or None."""
    fewest = _fewest_instances(sampler_name, triplet)
    fitting = [n for n in range(fewest, per_process // 2 + 1) if per_process % n == 0]
    return fitting[-1] if fitting else None


def _advice(sampler_name, ims_per_batch, num_instance, world_size, triplet):
    """"Use SOLVER.IMS_PER_BATCH a[ and DATALOADER.NUM_INSTANCE b][, or DATALOADER.NUM_INSTANCE c]." """
    ims, instances = batch_that_fits(sampler_name, ims_per_batch, num_instance, world_size, triplet)
    grown = f"SOLVER.IMS_PER_BATCH {ims}" + (f" and DATALOADER.NUM_INSTANCE {instances}"
                                              if instances != num_instance else "")
    fewer = (_fewer_instances_that_fit(sampler_name, ims_per_batch // world_size, triplet)
             if sampler_name in IDENTITY_SAMPLERS and ims_per_batch % world_size == 0 else None)
    return f"Use {grown}" + (f", or DATALOADER.NUM_INSTANCE {fewer}" if fewer and fewer != num_instance else "") + "."


def check_batch_composition(sampler_name, ims_per_batch, num_instance, world_size, triplet):
    """Refuse training batches a re-identification loss learns nothing from: fewer than two identities in a
    process's batch (nothing to tell apart: a triplet loss has no negative), or, under a triplet loss, one image of
    each identity (no positive pair). Either way the loss is 0 or undefined for the whole run, which then ends with
    exit status 0. The advice names values that pass this check and :func:`mdpr_plugin.engine.distributed.
    check_batch_sizes`."""
    per_process = ims_per_batch // world_size
    where = f"SOLVER.IMS_PER_BATCH {ims_per_batch}" + (f" / {world_size} processes" if world_size > 1 else "")
    advice = _advice(sampler_name, ims_per_batch, num_instance, world_size, triplet)
    if sampler_name not in IDENTITY_SAMPLERS:
        if per_process < 2:
            raise SamplingError(f"{where} gives a training batch of {per_process} image: one identity per batch, "
                                f"so there is nothing to tell apart. {advice}")
        if triplet:
            logger.warning("DATALOADER.SAMPLER_TRAIN %s draws images at random: the triplet loss gets a positive pair "
                           "only when two images of one identity happen to share a batch. NaiveIdentitySampler puts "
                           "DATALOADER.NUM_INSTANCE images of each identity in every batch.", sampler_name)
        return
    if per_process // num_instance < 2:
        raise SamplingError(
            f"{where} = {per_process} images per process with DATALOADER.NUM_INSTANCE {num_instance} puts "
            f"{per_process // num_instance or 'not even one'} identity in each training batch: there is nothing to "
            f"tell apart (a triplet loss has no negative and stays 0 for the whole run). {advice}")
    if triplet and num_instance < 2:
        raise SamplingError(
            f"DATALOADER.NUM_INSTANCE {num_instance} gives each identity one image per training batch: the triplet "
            "loss (MODEL.LOSSES.NAME TripletLoss) has no positive pair and stays 0 for the "
            f"whole run. {advice} (Or turn the triplet loss off with MODEL.LOSSES.TRI.SCALE 0.)")


def _check_one_identity(per_identity):
    if len(per_identity) != 1:
        return
    (pid, count), = per_identity.items()
    raise SamplingError(
        f"The training set has one identity (person id {pid}, {count} images): re-identification learns to tell "
        "people apart, which takes two or more (the classifier would have one class and a triplet loss no negative). "
        "Add the images of other people to the training set, or check DATASETS.NAMES and its folder.")


def check_identity_sampling(items, sampler_name, ims_per_batch, num_instance, world_size, triplet=False):
    """Refuse what fastreid's identity samplers would loop on forever and batches nothing is learnt from
    (:func:`check_batch_composition`, a set of one identity); warn about repeated images."""
    per_identity = Counter(item[1] for item in items)
    _check_one_identity(per_identity)
    if len(items) < ims_per_batch:
        raise SamplingError(
            f"The training set has {len(items)} images, fewer than SOLVER.IMS_PER_BATCH {ims_per_batch}: "
            "an epoch would have no iteration. Lower SOLVER.IMS_PER_BATCH or add training data.")
    check_batch_composition(sampler_name, ims_per_batch, num_instance, world_size, triplet)
    if sampler_name not in IDENTITY_SAMPLERS:
        return
    per_process = ims_per_batch // world_size
    # a batch (all processes together) holds per_process // num_instance distinct identities per process,
    # drawn without replacement: with fewer in the set, the samplers never complete one batch
    identities_per_batch = per_process // num_instance * world_size
    if len(per_identity) < identities_per_batch:
        per_process_fitting = len(per_identity) // world_size  # identities each process's batch can have
        advice = (f"Use SOLVER.IMS_PER_BATCH {per_process_fitting * num_instance * world_size}, raise "
                  "DATALOADER.NUM_INSTANCE, or add identities." if per_process_fitting >= 2 else
                  f"Add identities (each of the {world_size} processes needs two per batch).")
        raise SamplingError(
            f"{sampler_name} needs {identities_per_batch} different identities for one batch (SOLVER.IMS_PER_BATCH "
            f"{ims_per_batch} / DATALOADER.NUM_INSTANCE {num_instance}), but the training set has "
            f"{len(per_identity)}: it would wait forever for a first batch. {advice}")
    short = {pid: count for pid, count in per_identity.items() if count < num_instance}
    if short:
        logger.warning(
            "%d of %d training identities have fewer images than DATALOADER.NUM_INSTANCE %d (fewest: %d); "
            "%s repeats their images to fill a batch.", len(short), len(per_identity), num_instance,
            min(short.values()), sampler_name)


def check_rankable_queries(name, test_set, num_query):
    """Check that the queries of the test set ``name`` (its first ``num_query`` items) can be ranked: an error when
    no query has a gallery image of its person from another camera, a warning with the count when some have none
    (fastreid's metrics leave those out). A data set class of the user's own, without ``img_items``, is left be."""
    # imported here: the evaluation's modules (scikit-learn, ...) are not needed to import the data package
    from ..evaluation.evaluator import EmptyEvaluationSetError
    from ..evaluation.rank import query_validity

    if not hasattr(test_set, "img_items"):
        return
    query, gallery = test_set.img_items[:num_query], test_set.img_items[num_query:]
    q_pids, q_cams = (np.asarray([item[k] for item in query]) for k in (1, 2))
    g_pids, g_cams = (np.asarray([item[k] for item in gallery]) for k in (1, 2))
    valid, _ = query_validity(q_pids, g_pids, q_cams, g_cams)
    if not valid.any():
        raise EmptyEvaluationSetError(
            f"{name}: none of its {num_query} queries has a gallery image of the same person from another "
            f"camera ({len(g_pids)} gallery images), so nothing can be evaluated. Check that the query and "
            "gallery folders belong together (same person ids), or set DATASETS.TESTS to another test set.")
    if not valid.all():
        logger.warning("%s: %d of %d queries have no gallery image of their person from another camera; the "
                       "metrics leave them out.", name, int((~valid).sum()), num_query)
