"""Fine-tuning: task data, LoRA training, GGUF export and registration.

Training writes into the model catalogue (membrane.backends.catalogue: trained
models found on disk, installed anchors, each model's prompt version), which
the extractor and the embedded backend read; nothing at run time imports this
package. Modules, from the light ones up: ``data`` (labelled and distilled
cases, the gold-set overlap check), ``render`` (the training text: the
extractor's messages in the inference chat template), ``loop`` (the LoRA training loop, torch), ``export`` (llama.cpp's
converter, the manifest), ``ollama`` (registration with an Ollama server) and
``anchors`` (installing the opt-in Qwen models assembled from PyPI parts).
"""
