"""Command line: python -m imagen_app {generate,bench,train,export-stage,train-text-encoder} ..."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
