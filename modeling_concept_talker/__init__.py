"""Concept-Talker: a small, fast speech-to-speech tutor (concept adapter + LoRA Qwen2.5 thinker + talker + codec)."""

from .concept_adapter import ConceptTalkerAdapterModel
from .configuration_concept_talker import (
    AUDIO_END_TOKEN,
    AUDIO_START_TOKEN,
    AUDIO_TOKEN,
    ConceptAdapterConfig,
    ConceptTalkerConfig,
    LyraCodecConfig,
    TalkerConfig,
)
from .modeling_concept_talker import (
    ConceptTalkerForConditionalGeneration,
    ConceptTalkerOutput,
    ConceptTalkerPreTrainedModel,
)
from .pipeline_concept_talker import PIPELINE_TASK, ConceptTalkerPipeline
from .processing_concept_talker import DEFAULT_SYSTEM_PROMPT, ConceptTalkerProcessor, build_prompt
from .talker import ConceptTalkerTalkerModel

def _register_auto_classes() -> None:
    """Let AutoConfig / AutoModel / AutoProcessor find Concept-Talker when this package is imported."""
    from transformers import AutoConfig, AutoModel, AutoProcessor

    AutoConfig.register(ConceptTalkerConfig.model_type, ConceptTalkerConfig, exist_ok=True)
    AutoModel.register(ConceptTalkerConfig, ConceptTalkerForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(ConceptTalkerConfig, ConceptTalkerProcessor, exist_ok=True)


_register_auto_classes()

__version__ = "0.1.0"

__all__ = [
    "AUDIO_END_TOKEN",
    "AUDIO_START_TOKEN",
    "AUDIO_TOKEN",
    "ConceptAdapterConfig",
    "ConceptTalkerAdapterModel",
    "ConceptTalkerConfig",
    "ConceptTalkerForConditionalGeneration",
    "ConceptTalkerOutput",
    "ConceptTalkerPipeline",
    "ConceptTalkerPreTrainedModel",
    "ConceptTalkerProcessor",
    "ConceptTalkerTalkerModel",
    "PIPELINE_TASK",
    "DEFAULT_SYSTEM_PROMPT",
    "build_prompt",
    "LyraCodecConfig",
    "TalkerConfig",
]
