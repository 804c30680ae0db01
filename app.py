"""Starts the Imagen playground on the shipped weights (offline), or on another saved pipeline.

    python app.py [--host 127.0.0.1] [--port 7860] [--weights weights] [--share]

Environment variables: IMAGEN_WEIGHTS, GRADIO_SERVER_NAME, GRADIO_SERVER_PORT, IMAGEN_SHARE=1.
On Hugging Face Spaces the same file is the app_file.
"""
import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the shipped model is on disk; no hub at run time

from imagen_app.ui import CSS, build_app  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--weights", default=os.environ.get("IMAGEN_WEIGHTS", os.path.join(HERE, "weights")))
    parser.add_argument("--share", action="store_true", default=os.environ.get("IMAGEN_SHARE") == "1")
    parser.add_argument("--concurrency", type=int, default=1, help="generations at once (1 fits a 2-core CPU)")
    parser.add_argument("--max-queue", type=int, default=16)
    args = parser.parse_args(argv)
    demo = build_app(args.weights, concurrency_limit=args.concurrency, max_queue=args.max_queue)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, css=CSS, show_error=False)


if __name__ == "__main__":
    main()
