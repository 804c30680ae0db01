"""Starts the Imagen playground on the shipped weights (offline), or on another saved pipeline.

    python app.py [--host 127.0.0.1] [--port 7860] [--weights weights] [--share]
    python app.py --weights DeepFloyd/IF-I-XL-v1.0 --stage-2 DeepFloyd/IF-II-L-v1.0     # DeepFloyd IF (GPU)

Environment variables: IMAGEN_WEIGHTS, IMAGEN_IF_STAGE_2, GRADIO_SERVER_NAME, GRADIO_SERVER_PORT, IMAGEN_SHARE=1,
IMAGEN_CACHE_MINUTES (--cache-minutes: files written for a request are deleted after this long, default 60),
IMAGEN_MCP=1 (--mcp: also serve `generate` as an MCP tool; needs `pip install "gradio[mcp]"`), and the request
budget IMAGEN_MAX_STEPS, IMAGEN_MAX_IMAGES, IMAGEN_MAX_COMPARE_CELLS (--max-steps, --max-images,
--max-compare-cells; docs/app.md).
`--weights` also takes an IF stage I folder, or a JSON file naming {"stage_1": ..., "stage_2": ...}.
On Hugging Face Spaces the same file is the app_file.
"""
import argparse
import importlib.util
import os
import sys
from typing import Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the shipped model is on disk; no hub at run time

from imagen_app.app.budget import add_budget_flags, budget_from_args  # noqa: E402
from imagen_app.app.ui import CSS, build_app  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MCP_MISSING = ('--mcp / IMAGEN_MCP=1: the "mcp" package is not installed, so the app starts without its MCP server. '
               'To serve generate as an MCP tool: pip install "gradio[mcp]"')


def mcp_available() -> bool:
    return importlib.util.find_spec("mcp") is not None


def mcp_server(requested: bool) -> Optional[bool]:
    """launch()'s mcp_server: True when asked for and the `mcp` package is there; False when asked for without
    it (a message says what to install, and the app starts without an MCP server); None otherwise (Gradio's
    default, its GRADIO_MCP_SERVER variable)."""
    if not requested:
        return None
    if not mcp_available():
        print(MCP_MISSING, file=sys.stderr, flush=True)
        return False
    return True


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--weights", default=os.environ.get("IMAGEN_WEIGHTS", os.path.join(HERE, "weights")))
    parser.add_argument("--stage-2", default=os.environ.get("IMAGEN_IF_STAGE_2") or None,
                        help="DeepFloyd IF: stage II folder or hub id, with --weights naming IF's stage I")
    parser.add_argument("--share", action="store_true", default=os.environ.get("IMAGEN_SHARE") == "1")
    parser.add_argument("--concurrency", type=int, default=1, help="generations at once (1 fits a 2-core CPU)")
    parser.add_argument("--max-queue", type=int, default=16)
    parser.add_argument("--cache-minutes", type=float, default=float(os.environ.get("IMAGEN_CACHE_MINUTES", "60")),
                        help="while the app runs, delete every file written for a request (previews, results, PNG "
                             "downloads) once it is this many minutes old (checked every N/2 minutes, at most 10 "
                             "apart; files Gradio does not track, two checks later; default 60; env "
                             "IMAGEN_CACHE_MINUTES)")
    parser.add_argument("--mcp", action="store_true", default=os.environ.get("IMAGEN_MCP") == "1",
                        help='also serve generate as an MCP tool at /gradio_api/mcp/sse (env IMAGEN_MCP=1; '
                             'needs pip install "gradio[mcp]")')
    add_budget_flags(parser)
    args = parser.parse_args(argv)
    source = {"stage_1": args.weights, "stage_2": args.stage_2} if args.stage_2 else args.weights
    if args.cache_minutes <= 0:
        parser.error("--cache-minutes must be more than 0")
    try:
        budget = budget_from_args(args)  # a bad value is named before the model loads
    except ValueError as e:
        parser.error(str(e))
    print(f"request budget: {budget.describe()}", flush=True)
    demo = build_app(source, concurrency_limit=args.concurrency, max_queue=args.max_queue, cache_minutes=args.cache_minutes,
                     budget=budget)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=CSS, show_error=False,
                mcp_server=mcp_server(args.mcp))


if __name__ == "__main__":
    main()
