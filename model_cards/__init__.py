"""Model card templates, rendered with `huggingface_hub.ModelCard` (see `card.py`)."""

from .card import CardFacts, render_model_card

__all__ = ["CardFacts", "render_model_card"]
