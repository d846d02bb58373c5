"""Registering a trained model with Ollama: FROM the base GGUF, ADAPTER the
GGUF LoRA, and a TEMPLATE that renders exactly what training rendered.

The templates below are Go-template copies of llama-cpp-python's formatters
(format_chatml, format_gemma) that produced the training text: chatml always
opens with a system turn; gemma drops the system message. A test renders the
same messages both ways.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from membrane.errors import ConfigError, ModelNotFound

if TYPE_CHECKING:
    from membrane.config import Settings

__all__ = ["OLLAMA_TEMPLATES", "STOP", "register_ollama"]

OLLAMA_TEMPLATES = {
    "chatml": (
        "<|im_start|>system\n{{ .System }}<|im_end|>\n"
        '{{ range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n'
        "{{ end }}{{ end }}<|im_start|>assistant\n"
    ),
    "gemma": (
        '{{ range .Messages }}{{ if eq .Role "user" }}<start_of_turn>user\n{{ .Content }}<end_of_turn>\n'
        '{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n'
        "{{ end }}{{ end }}<start_of_turn>model\n"
    ),
}
STOP = {"chatml": "<|im_end|>", "gemma": "<end_of_turn>"}


def register_ollama(settings: Settings, name: str) -> str:
    """Create trained model `name` in the configured Ollama server under the same name.

    The same name is what maps the Ollama model to its manifest's prompt
    version (catalogue.prompt_version_for).
    """
    from membrane.backends.catalogue import trained_models
    from membrane.backends.gguf import locate_gguf
    from membrane.backends.ollama import OllamaBackend

    model = trained_models(settings).get(name)
    if model is None:
        raise ModelNotFound(
            f"no trained model {name!r} in {settings.train.models_dir} or the package",
            hint="Train one with `membrane train`, or list them with `membrane models`.",
        )
    template = OLLAMA_TEMPLATES.get(model.chat_format)
    if template is None:
        raise ConfigError(
            f"no Ollama template for chat format {model.chat_format!r} (known: {', '.join(sorted(OLLAMA_TEMPLATES))})",
            key="train.base",
        )
    backend = OllamaBackend(settings)
    backend.create_model(
        name,
        locate_gguf(model.base_path),
        adapter=model.adapter,
        template=template,
        parameters={"stop": [STOP[model.chat_format]], "num_ctx": model.n_ctx},
    )
    return name
