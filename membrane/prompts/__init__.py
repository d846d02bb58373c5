"""Prompt texts, versioned by file name: <version>.<part>.txt, and the version names.

The one definition of each prompt version: the extractor renders them
(membrane.extract), the model catalogue maps models to them
(membrane.backends.catalogue), training writes the tuned one into manifests.
"""

__all__ = ["COMPACT_PROMPT_VERSION", "PROMPT_VERSION", "PROMPT_VERSIONS", "TUNED_PROMPT_VERSION", "is_compact"]

PROMPT_VERSION = "extract-v1"
# The prompt a fine-tuned model was trained on: one paragraph, no schema text
# and no worked example (the tuning taught the format; constrained decoding
# still enforces it). A trained model's manifest names its version.
TUNED_PROMPT_VERSION = "extract-t1"
# The same for a model tuned to write the compact answer (entity names, and
# relationships as [source, RELATION, target] lists; membrane.schema).
COMPACT_PROMPT_VERSION = "extract-t2"
PROMPT_VERSIONS = (PROMPT_VERSION, TUNED_PROMPT_VERSION, COMPACT_PROMPT_VERSION)


def is_compact(version: str) -> bool:
    """Whether models prompted with `version` answer in the compact shape."""
    return version == COMPACT_PROMPT_VERSION
