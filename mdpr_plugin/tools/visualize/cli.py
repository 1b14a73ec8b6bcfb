"""``mdpr-visualize ranking|attention --config-file FILE [options] KEY VALUE ...``."""
import sys

from ...errors import reporting_errors
from ...resources import resource_failures_explained
from ..common import check_output_folder, positive_int, setup_tool_config, setup_tool_logging, tool_parser
from . import attention, ranking

PROG = "mdpr-visualize"
COMMANDS = {
    "ranking": "each query's top-k gallery images, correct matches framed green, wrong ones red",
    "attention": "the soft branch's foreground and background attention maps as heatmaps",
}
USAGE = (f"usage: {PROG} {{{','.join(COMMANDS)}}} --config-file FILE --output-dir DIR [options] "
         "[KEY VALUE ...]\n" + "".join(f"  {name:<10} {text}\n" for name, text in COMMANDS.items())
         + f"`{PROG} COMMAND -h` lists a command's options.")


def add_scale(parser):
    parser.add_argument("--scale", type=positive_int, default=1,
                        help="draw the images N times INPUT.SIZE_TEST (default 1)")


def ranking_parser():
    parser = tool_parser(f"{PROG} ranking: {COMMANDS['ranking']}.")
    parser.prog = f"{PROG} ranking"
    parser.add_argument("--output-dir", required=True, help="folder for the PNGs and summary.csv")
    parser.add_argument("--topk", type=positive_int, default=10, help="gallery images per query (default 10)")
    parser.add_argument("--order", choices=list(ranking.ORDERS), default="ap-ascending",
                        help="order of the pictures (their file names sort in it): "
                             + "; ".join(f"{k}: {v}" for k, v in ranking.ORDERS.items())
                             + " (default ap-ascending)")
    parser.add_argument("--num-queries", type=positive_int, default=None,
                        help="draw only the first N queries in --order (default: all)")
    parser.add_argument("--rerank", action="store_true",
                        help="rank with k-reciprocal re-ranking (TEST.RERANK.ENABLED True)")
    add_scale(parser)
    return parser


def attention_parser():
    parser = tool_parser(f"{PROG} attention: {COMMANDS['attention']}.")
    parser.prog = f"{PROG} attention"
    parser.add_argument("--output-dir", required=True, help="folder for the PNGs")
    source = parser.add_mutually_exclusive_group(required=True)
    # one path per --input (repeatable): a list would swallow the trailing KEY VALUE overrides
    source.add_argument("--input", action="append", metavar="FOLDER_OR_IMAGE",
                        help="an image, or a folder searched recursively for .jpg/.jpeg/.png; repeat "
                             "--input for more")
    source.add_argument("--test-set", action="store_true",
                        help="every query and gallery image of DATASETS.TESTS[0] (into query/ and gallery/)")
    add_scale(parser)
    return parser


def run_command(command, argv):
    """Parse ``argv`` for ``command`` and run it; returns what the command returns."""
    if command == "ranking":
        args = ranking_parser().parse_args(argv)
        if args.rerank:
            args.opts = list(args.opts) + ["TEST.RERANK.ENABLED", "True"]
        check_output_folder(args.output_dir)
        cfg = setup_tool_config(args)
        return ranking.run(cfg, args.output_dir, args.topk, args.order, args.num_queries, args.scale)
    args = attention_parser().parse_args(argv)
    check_output_folder(args.output_dir)
    cfg = setup_tool_config(args)
    return attention.run(cfg, args.config_file, args.output_dir, args.input, args.test_set, args.scale)


def main(argv=None):
    """Exit status 0; 2 for a missing or unknown command; bad input exits with one line naming it."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"{PROG}: unknown command {argv[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    setup_tool_logging()
    with reporting_errors(f"{PROG} {argv[0]}"), resource_failures_explained(
            f"{PROG} {argv[0]}", "--scale, TEST.IMS_PER_BATCH or INPUT.SIZE_TEST"):
        run_command(argv[0], argv[1:])
    return 0
