"""imagen-app: Imagen (Saharia et al. 2022) as a diffusers pipeline, with a Gradio playground.

Layers, each importing only the ones above it in this list:
    images, examples,  shared helpers (image <-> tensor conversions), the app's example prompts, how many
    threads, hub       CPU threads a generation uses, and whether the Hub may be asked (HF_HUB_OFFLINE)
    models/            Efficient U-Net, T5 text encoder and vocabulary, training noise schedules
    pipeline/          the cascade (ImagenPipeline), settings, schedulers, guidance, editing, DeepFloyd IF
    training/          corpus, curriculum, training loop, checkpoints, export
    evaluation/        evaluate, bench, compare
    app/               the Gradio UI
    cli                python -m imagen_app ...
The public names below are imported on first use, so `import imagen_app.training.data` does not load
the inference stack.
"""
import importlib

_PUBLIC = {
    "ImagenPipeline": "pipeline.pipeline", "ImagenPipelineOutput": "pipeline.pipeline", "StageEvent": "pipeline.pipeline",
    "SCHEDULERS": "pipeline.schedulers", "PromptEncoder": "models.text_encoder", "PromptReport": "models.text_encoder",
    "load_text_encoder": "models.text_encoder", "ImagenUNet": "models.unet",
}
__all__ = list(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        return getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module 'imagen_app' has no attribute {name!r}")
