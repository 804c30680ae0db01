"""Command line: python -m imagen_app {generate,bench,evaluate,grid,train,export-stage,export-dataset,assemble,train-text-encoder} ..."""
from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
