"""Fine-tuning: task data, LoRA training, GGUF export and registration.

Modules, from the light ones up: ``registry`` (trained models found on disk;
imported by the extractor and the embedded backend, so it never imports
torch), ``data`` (labelled and distilled cases, the gold-set overlap check),
``render`` (the training text: the extractor's messages in the inference chat
template), ``loop`` (the LoRA training loop, torch), ``export`` (llama.cpp's
converter, the manifest), ``ollama`` (registration with an Ollama server) and
``anchors`` (the opt-in Qwen models assembled from PyPI parts).
"""
