"""mdpr-search: a faiss index of gallery features, and top-k search in it with features or images.

    mdpr-search index --features gallery.npz --output gallery.index [--ivf NLIST --nprobe N]
    mdpr-search query --index gallery.index --features query.npz [--topk 10] [--rerank] [--output results.csv]
    mdpr-search query --index gallery.index --images FOLDER --config-file C.yml [--onnx model.onnx] [KEY VALUE ...]

Features are compared by cosine similarity (rows are L2-normalised on loading, as mdpr-extract writes
them), and distances are fastreid's cosine distance, ``1 - cosine``. The indexes store the unit rows
under the squared L2 distance, ``2 - 2 cosine``: the same ranking, and IVF's lists are trained by
k-means, an L2 method (with inner-product lists, whose centroids are not unit vectors, recall@10 was
up to 0.12 lower on synthetic features). The default index is exact (``IndexFlatL2``); ``--ivf NLIST``
builds an inverted-file index (``IVF<NLIST>,Flat``) that searches
``nprobe`` of its NLIST lists, for galleries too large for an exhaustive search; its recall@10
against the exact search is measured and printed when it is built. Beside ``gallery.index``,
``gallery.index.json`` keeps the gallery's image paths and where they came from.

``--rerank`` re-ranks with k-reciprocal encoding (fastreid's formulation,
``mdpr_plugin.evaluation.rerank_distance``) over query + the whole gallery: its cost grows with the
gallery (a query x gallery distance matrix), so it is for galleries up to about 100k images.
"""
import argparse
import csv
import json
import logging
import os
import time

import numpy as np
import torch

from ..errors import InputError, MissingFileError, reporting_errors
from ..evaluation import rerank_distance
from ..output_files import atomic_open, staged_outputs
from ..resources import check_fits, resource_failures_explained
from .common import check_output_file, setup_tool_config, setup_tool_logging, spreadsheet_safe
from .extract import add_backend_arguments, backend_of, build_extractor, extract_folder, load_features

logger = logging.getLogger(__name__)

RECALL_K = 10
RECALL_SAMPLE = 1000   # gallery vectors used as queries to measure an IVF index's recall
MIN_POINTS_PER_LIST = 39  # fewer training points per list than this and faiss warns k-means is poor
LOWER = {  # what to lower when a command runs out of memory
    "index": lambda args: "the gallery's size (index it in parts)",
    "query": lambda args: (f"--topk (now {args.topk}), the number of queries, --batch-size (now {args.batch_size}, "
                           "with --images)" + (", or search without --rerank" if args.rerank else "")),
}


def _faiss():
    import faiss  # a dependency of the package (faiss-cpu), imported late: it is slow to import

    return faiss


def normalize(features):
    features = np.ascontiguousarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


# ------------------------------------------------------------------------------------------ indexes
def build_index(features, nlist=None, nprobe=8):
    """A squared-L2 index of the unit rows of ``features``: exact, or IVF with ``nlist`` lists."""
    faiss = _faiss()
    features = normalize(features)
    count, dim = features.shape
    if nlist is None:
        index = faiss.IndexFlatL2(dim)
    else:
        if nlist < 1 or nprobe < 1:
            raise InputError(f"--ivf and --nprobe must be at least 1, got {nlist} and {nprobe}")
        if count < nlist:
            raise InputError(f"--ivf {nlist} needs at least {nlist} gallery features to train its lists, "
                             f"got {count}; use fewer lists or the exact index (no --ivf)")
        if count < MIN_POINTS_PER_LIST * nlist:
            logger.warning("%d features for %d lists: fewer than %d per list, the lists will be poor; "
                           "about sqrt(N) lists is usual", count, nlist, MIN_POINTS_PER_LIST)
        index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_L2)
        start = time.perf_counter()
        index.train(features)
        logger.info("Trained %d IVF lists on %d features in %.1f s", nlist, count, time.perf_counter() - start)
        index.nprobe = min(nprobe, nlist)
    index.add(features)
    return index


def exact_topk(gallery, queries, k):
    """Exact top-k ``(squared distances, indices)`` of ``queries`` in ``gallery``."""
    flat = _faiss().IndexFlatL2(gallery.shape[1])
    flat.add(gallery)
    return flat.search(queries, k)


def ivf_recall(index, gallery, k=RECALL_K, sample=RECALL_SAMPLE, seed=0):
    """recall@k of ``index`` against the exact search, with up to ``sample`` gallery vectors as queries:
    the mean fraction of each query's true k nearest that the index returns among its k."""
    gallery = normalize(gallery)
    k = min(k, len(gallery))
    rows = np.random.default_rng(seed).choice(len(gallery), min(sample, len(gallery)), replace=False)
    queries = gallery[np.sort(rows)]
    _, truth = exact_topk(gallery, queries, k)
    _, found = index.search(queries, k)
    hits = [len(np.intersect1d(t, f[f >= 0])) for t, f in zip(truth, found)]
    return float(np.mean(hits)) / k


def gallery_vectors(index):
    """The stored (unit) gallery vectors, for re-ranking: exact copies for Flat and IVF-Flat."""
    faiss = _faiss()
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()  # IVF lists are not addressable by id without it
    return index.reconstruct_n(0, index.ntotal)


def sidecar(index_path):
    return index_path + ".json"


def save_index(path, index, meta):
    """``path``: the faiss index; ``path``.json: ``meta`` (the gallery's paths, root, settings). Both replace the
    previous pair together, once both are written."""
    faiss = _faiss()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with staged_outputs("--output") as outputs:
        with outputs.open(path, "wb") as f:  # through Python's file: a failed write is an OSError, not faiss's text
            faiss.write_index(index, faiss.PyCallbackIOWriter(f.write))
        with outputs.open(sidecar(path), "w") as f:
            json.dump(meta, f, indent=1)


def load_index(path):
    """``(index, meta)`` as ``save_index`` wrote them."""
    for file in (path, sidecar(path)):
        if not os.path.isfile(file):
            raise MissingFileError(f"{file} does not exist; make the index with `mdpr-search index`")
    with open(sidecar(path)) as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as error:
            raise InputError(f"{sidecar(path)} is not valid JSON ({error}); rebuild the index") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("paths"), list):
        raise InputError(f"{sidecar(path)} has no 'paths' list; rebuild the index with `mdpr-search index`")
    check_fits(os.path.getsize(path), f"{path}: the index", "build it from fewer gallery features, or run on a "
               "machine with more memory")  # read whole into memory
    try:
        index = _faiss().read_index(path)
    except RuntimeError as error:
        raise InputError(f"{path} is not a faiss index ({str(error).splitlines()[0]}); "
                         "rebuild it with `mdpr-search index`") from None
    if index.ntotal != len(meta["paths"]):
        raise InputError(f"{path} holds {index.ntotal} vectors but {sidecar(path)} lists {len(meta['paths'])} "
                         "paths; rebuild the index")
    return index, meta


# ------------------------------------------------------------------------------------------- search
def search(index, queries, topk):
    """``(distances, indices)``, each num_query x topk, cosine distance ``1 - cosine`` increasing."""
    squared, indices = index.search(normalize(queries), min(topk, index.ntotal))
    # |q - x|^2 / 2 = 1 - cosine for unit rows; clipped: float32 rounding gives -1e-7 for a row and itself
    return np.clip(squared / 2, 0, 2), indices  # IVF may find fewer than topk: index -1


def check_rerank_settings(k1, k2, lambda_value):
    """Refuse settings re-ranking fails on (k1 or k2 below 1) or turns into another distance (lambda outside 0-1:
    a negative weight on one of the two distances it mixes)."""
    if k1 < 1 or k2 < 1:
        raise InputError(f"--k1 and --k2 must be at least 1, got {k1} and {k2}")
    if not 0 <= lambda_value <= 1:
        raise InputError(f"--lambda is the weight of the original distance, from 0 to 1; got {lambda_value}")


def rerank_search(index, queries, topk, k1=20, k2=6, lambda_value=0.3):
    """Top-k by k-reciprocal re-ranked distance over the queries and every gallery vector."""
    gallery = gallery_vectors(index)
    if k1 >= len(queries) + len(gallery):
        raise InputError(f"--k1 {k1} needs more than {k1} query + gallery images, got "
                         f"{len(queries) + len(gallery)}; lower --k1")
    dist = rerank_distance(torch.from_numpy(normalize(queries)), torch.from_numpy(gallery), "cosine",
                           k1=k1, k2=k2, lambda_value=lambda_value)
    topk = min(topk, dist.shape[1])
    nearest = np.argpartition(dist, topk - 1, axis=1)[:, :topk]
    order = np.argsort(np.take_along_axis(dist, nearest, 1), axis=1, kind="stable")
    indices = np.take_along_axis(nearest, order, 1)
    return np.take_along_axis(dist, indices, 1), indices


def result_rows(query_paths, gallery_paths, distances, indices):
    """``(query, rank, gallery, distance)`` tuples, rank from 1; missing IVF results are skipped."""
    for query, dist_row, index_row in zip(query_paths, distances, indices):
        rank = 0
        for distance, i in zip(dist_row, index_row):
            if i < 0:
                continue
            rank += 1
            yield query, rank, gallery_paths[i], float(distance)


# ---------------------------------------------------------------------------------------- commands
def command_index(args):
    for path in (args.output, sidecar(args.output)):
        check_output_file(path)
    record = load_features(args.features)
    index = build_index(record["features"], args.ivf, args.nprobe)
    meta = {"paths": record["paths"], "root": record.get("root", ""),
            "features_file": os.path.abspath(args.features), "feature_dim": int(index.d),
            "model": record.get("model", ""), "config_file": record.get("config_file", ""),
            "kind": "flat" if args.ivf is None else "ivf"}
    kind = "exact (flat)"
    if args.ivf is not None:
        recall = ivf_recall(index, record["features"])
        meta.update(nlist=args.ivf, nprobe=int(index.nprobe), recall_at_10=recall)
        kind = f"IVF, {args.ivf} lists, nprobe {index.nprobe}"
    save_index(args.output, index, meta)
    print(f"{args.output}: {index.ntotal} gallery features of dim {index.d}, {kind}")
    if args.ivf is not None:
        print(f"IVF recall@{RECALL_K} vs exact search: {recall:.4f} "
              f"({min(RECALL_SAMPLE, index.ntotal)} gallery vectors as queries)")


def query_record(args, dim):
    """Query features from --features or, with --images, extracted now with the config's model."""
    if (args.features is None) == (args.images is None):
        raise InputError("give exactly one of --features FILE.npz and --images FOLDER")
    if args.features is not None:
        record = load_features(args.features)
    else:
        if args.config_file is None:
            raise InputError("--images needs --config-file (and MODEL.WEIGHTS or --onnx) to extract features")
        extractor = build_extractor(setup_tool_config(args), backend_of(args), args.onnx, args.batch_size)
        record = extract_folder(args.images, extractor, args.config_file)
    if record["features"].shape[1] != dim:
        raise InputError(f"query features are {record['features'].shape[1]}-d but the index holds {dim}-d "
                         "features: extract both with the same model")
    return record


def command_query(args):
    if args.topk < 1:
        raise InputError(f"--topk must be at least 1, got {args.topk}")
    if args.output:
        check_output_file(args.output)
    if args.rerank:
        check_rerank_settings(args.k1, args.k2, args.lambda_value)
    index, meta = load_index(args.index)
    if args.nprobe is not None:
        if args.nprobe < 1:
            raise InputError(f"--nprobe must be at least 1, got {args.nprobe}")
        ivf = _faiss().try_extract_index_ivf(index)
        if ivf is None:
            raise InputError(f"--nprobe applies to IVF indexes; {args.index} is exact")
        ivf.nprobe = args.nprobe
    record = query_record(args, index.d)
    if args.rerank:
        distances, indices = rerank_search(index, record["features"], args.topk, args.k1, args.k2, args.lambda_value)
    else:
        distances, indices = search(index, record["features"], args.topk)
    rows = list(result_rows(record["paths"], meta["paths"], distances, indices))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with atomic_open(args.output, "w", "--output", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["query", "rank", "gallery", "distance"])
            writer.writerows([spreadsheet_safe(cell) for cell in row] for row in rows)  # paths can start with =
        print(f"{args.output}: top-{args.topk} of {len(record['paths'])} queries ({len(rows)} rows)")
        return rows
    print(f"queries under {record.get('root', '?')}, gallery under {meta.get('root', '?')}; "
          f"distance = {'re-ranked' if args.rerank else 'cosine'} distance")
    previous = None
    for query, rank, gallery, distance in rows:
        if query != previous:
            print(query)
            previous = query
        print(f"  {rank:3d}  {distance:.4f}  {gallery}")
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="mdpr-search",
                                     description="Index gallery features and search them (faiss).")
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser("index", help="build a faiss index from an mdpr-extract .npz")
    build.add_argument("--features", required=True, metavar="FILE", help="gallery features (.npz)")
    build.add_argument("--output", required=True, metavar="FILE", help="the index to write (+ FILE.json)")
    build.add_argument("--ivf", type=int, metavar="NLIST", default=None,
                       help="an IVF index with NLIST lists (about sqrt(gallery size)); default: exact")
    build.add_argument("--nprobe", type=int, default=8, help="lists an IVF search visits (default 8)")

    query = commands.add_parser("query", help="top-k gallery images for query features or images")
    query.add_argument("--index", required=True, metavar="FILE", help="an index from `mdpr-search index`")
    query.add_argument("--features", metavar="FILE", help="query features (.npz from mdpr-extract)")
    query.add_argument("--images", metavar="FOLDER", help="query images (features extracted now)")
    query.add_argument("--config-file", metavar="FILE", help="the model's config (with --images)")
    add_backend_arguments(query)
    query.add_argument("--topk", type=int, default=10, help="results per query (default 10)")
    query.add_argument("--nprobe", type=int, default=None, help="override an IVF index's nprobe")
    query.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking over query + gallery")
    query.add_argument("--k1", type=int, default=20, help="re-ranking k1 (default 20, fastreid's)")
    query.add_argument("--k2", type=int, default=6, help="re-ranking k2 (default 6)")
    query.add_argument("--lambda", dest="lambda_value", type=float, default=0.3,
                       help="re-ranking weight of the original distance (default 0.3)")
    query.add_argument("--output", metavar="FILE", help="write query,rank,gallery,distance rows to this CSV")
    query.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                       help="KEY VALUE config overrides (with --images), e.g. MODEL.WEIGHTS model.pth")
    return parser.parse_args(argv)


def main(argv=None):
    setup_tool_logging()
    args = parse_args(argv)
    with reporting_errors("mdpr-search"), resource_failures_explained(
            f"mdpr-search {args.command}", LOWER[args.command](args)):
        if args.command == "index":
            command_index(args)
        else:
            command_query(args)


if __name__ == "__main__":
    main()
