"""Prompt texts, versioned by file name: <version>.<part>.txt, and the version names.

The one definition of each prompt version: the extractor renders them
(membrane.extract), the model catalogue maps models to them
(membrane.backends.catalogue), training writes the tuned one into manifests.
"""

__all__ = ["PROMPT_VERSION", "PROMPT_VERSIONS", "TUNED_PROMPT_VERSION"]

PROMPT_VERSION = "extract-v1"
# The prompt a fine-tuned model was trained on: one paragraph, no schema text
# and no worked example (the tuning taught the format; constrained decoding
# still enforces it). A trained model's manifest names its version.
TUNED_PROMPT_VERSION = "extract-t1"
PROMPT_VERSIONS = (PROMPT_VERSION, TUNED_PROMPT_VERSION)
