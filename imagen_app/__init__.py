"""imagen-app: Imagen (Saharia et al. 2022) as a diffusers pipeline, with a Gradio playground."""
from .pipeline import ImagenPipeline, ImagenPipelineOutput, StageEvent, SCHEDULERS
from .text_encoder import PromptEncoder, PromptReport, load_text_encoder
from .unet import ImagenUNet

__all__ = ["ImagenPipeline", "ImagenPipelineOutput", "StageEvent", "SCHEDULERS", "PromptEncoder", "PromptReport",
           "load_text_encoder", "ImagenUNet"]
