"""Model card templates, rendered with `huggingface_hub.ModelCard`."""
