"""The LoRA training loop, in plain sight (nanoGPT's shape): load the base,
wrap every linear projection in LoRA, step AdamW over seeded batches, evaluate
every `eval_every` steps and keep the best adapter by validation loss, write a
resumable checkpoint every `checkpoint_every` steps.

A checkpoint is one dict: adapter weights, optimizer state, step, best
validation loss, the run's config and the RNG state. Batches are a pure
function of (seed, step), so a resumed run sees exactly the batches the
uninterrupted run would have seen. Only this module (and export) import torch.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from membrane.errors import ConfigError
from membrane.files import atomic_write
from membrane.logs import get_logger
from membrane.train.render import IGNORE_INDEX, Example

__all__ = ["Progress", "RunConfig", "RunResult", "answer_loss", "load_base", "run"]

log = get_logger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
BEST_DIR = "best-adapter"
WARMUP_STEPS = 10
MIN_LR_RATIO = 0.1
GRAD_CLIP = 1.0


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides the weights a run produces (compared on --resume)."""

    base: str
    data_sha256: str
    rank: int
    alpha: float
    dropout: float
    learning_rate: float
    epochs: float
    batch_size: int
    grad_accumulation: int
    eval_every: int
    checkpoint_every: int
    seed: int
    max_seq_len: int
    train_cases: int
    val_cases: int
    answer: str = "objects"  # train.answer: the answer's shape, objects or compact
    repeat: str = ""  # train.repeat joined by "; ": files whose cases train more than once an epoch


@dataclass(frozen=True)
class Progress:
    """One optimizer step, for the progress bar."""

    step: int
    max_steps: int
    loss: float
    lr: float
    val_loss: float | None
    best_val_loss: float | None


@dataclass(frozen=True)
class RunResult:
    steps: int
    max_steps: int
    best_val_loss: float | None
    first_loss: float | None
    last_loss: float | None
    train_tokens: int  # tokens read by training forward passes, over every run (resumes included)
    seconds: float  # training-loop wall time, over every run
    adapter_dir: Path  # the best adapter (peft format)
    resumed_from: int
    initial_val_loss: float | None = None  # before the first step (None on resume)
    losses: list[float] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.train_tokens / self.seconds if self.seconds > 0 else 0.0


def load_base(folder: Path, gguf_file: str | None) -> Any:
    """The base model in fp32 for training: a GGUF dequantised by transformers, or an HF folder."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    return AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)


def _wrap_lora(model: Any, config: RunConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,  # type: ignore[arg-type]  # peft annotates int; the scale alpha/r is a float
        lora_dropout=config.dropout,
        target_modules="all-linear",  # every linear projection; peft leaves the output head out
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def max_steps_for(config: RunConfig) -> int:
    per_epoch = math.ceil(config.train_cases / (config.batch_size * config.grad_accumulation))
    return max(1, math.ceil(per_epoch * config.epochs))


def lr_at(step: int, config: RunConfig, max_steps: int) -> float:
    """Linear warm-up, then cosine decay to MIN_LR_RATIO of the peak."""
    warmup = min(WARMUP_STEPS, max(1, max_steps // 10))
    if step < warmup:
        return config.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, max_steps - warmup)
    return config.learning_rate * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


GROUP_BATCHES = 16  # batches sorted by length together, so padding stays small


def epoch_order(epoch: int, config: RunConfig, lengths: Sequence[int] | None = None) -> list[int]:
    """The order cases are read in one epoch: a seeded shuffle; with `lengths`, cut into
    groups of GROUP_BATCHES batches, each group sorted by length and the batches shuffled
    again, so the cases of one batch have similar lengths and little padding is computed."""
    rng = random.Random(config.seed * 1_000_003 + epoch)
    order = list(range(config.train_cases))
    rng.shuffle(order)
    if lengths is None:
        return order
    size, group = config.batch_size, config.batch_size * GROUP_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), group):
        by_length = sorted(order[start : start + group], key=lambda i: lengths[i])
        batches += [by_length[k : k + size] for k in range(0, len(by_length), size)]
    rng.shuffle(batches)
    return [i for batch in batches for i in batch]


def batch_indices(step: int, micro: int, config: RunConfig, lengths: Sequence[int] | None = None) -> list[int]:
    """Case indices of micro-batch `micro` of optimizer step `step`: a pure function of the
    seed (and of the cases' lengths, when given)."""
    per_step = config.batch_size * config.grad_accumulation
    start = step * per_step + micro * config.batch_size
    orders: dict[int, list[int]] = {}
    out = []
    for position in range(start, start + config.batch_size):
        epoch, offset = divmod(position, config.train_cases)
        if epoch not in orders:
            orders[epoch] = epoch_order(epoch, config, lengths)
        out.append(orders[epoch][offset])
    return out


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors; padding is masked from attention and loss."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def answer_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Mean cross-entropy over the answer tokens, computing the output head only where a
    label is: the same value as `model(**batch).loss` (transformers' shifted, masked mean),
    but the prompt's positions never meet the output head, which on a large vocabulary
    (Gemma's 262k rows) is most of a step's arithmetic.

    `model` is the peft-wrapped causal LM; its decoder is `.model` of the base model, as
    in every transformers *ForCausalLM; a final logit soft-cap (Gemma) is applied as there.
    """
    import torch

    causal_lm = model.get_base_model()
    decoder = causal_lm.model
    hidden = decoder(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE_INDEX
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][keep])
    cap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def estimate_val_loss(model: Any, val: Sequence[Example], batch_size: int, pad_id: int) -> float | None:
    """Mean answer-token loss over the validation cases (None when there are none)."""
    import torch

    if not val:
        return None
    model.eval()
    total, tokens = 0.0, 0
    val = sorted(val, key=lambda e: len(e.input_ids))  # batches of like lengths: little padding
    with torch.no_grad():
        for start in range(0, len(val), batch_size):
            chunk = val[start : start + batch_size]
            n = sum(e.answer_tokens for e in chunk)
            total += float(answer_loss(model, collate(chunk, pad_id))) * n
            tokens += n
    model.train()
    return total / max(1, tokens)


@dataclass
class _State:
    """What a checkpoint carries besides weights and optimizer."""

    step: int = 0
    best_val_loss: float | None = None
    initial_val_loss: float | None = None
    losses: list[float] = field(default_factory=list)
    tokens: int = 0  # read by forward passes, over every run of this training
    seconds: float = 0.0  # training-loop wall time, over every run


def _save_checkpoint(path: Path, model: Any, optimizer: Any, state: _State, config: RunConfig) -> None:
    import torch
    from peft import get_peft_model_state_dict

    checkpoint = {
        "adapter": get_peft_model_state_dict(model),
        "optimizer": optimizer.state_dict(),
        "step": state.step,
        "best_val_loss": state.best_val_loss,
        "initial_val_loss": state.initial_val_loss,
        "losses": state.losses,
        "tokens": state.tokens,
        "seconds": state.seconds,
        "config": asdict(config),
        "rng": torch.get_rng_state(),
    }
    with atomic_write(path, binary=True) as handle:  # a crash mid-write never leaves a torn checkpoint
        torch.save(checkpoint, handle)


def _load_checkpoint(path: Path, model: Any, optimizer: Any, config: RunConfig) -> _State:
    import torch
    from peft import set_peft_model_state_dict

    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if checkpoint["config"] != asdict(config):
        changed = sorted(k for k, v in asdict(config).items() if checkpoint["config"].get(k) != v)
        raise ConfigError(
            f"cannot resume from {path}: the run's settings or data changed ({', '.join(changed)})",
            key="train",
            hint="Resume with the same settings and data, or start a fresh run without --resume.",
        )
    set_peft_model_state_dict(model, checkpoint["adapter"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["rng"])
    return _State(
        int(checkpoint["step"]),
        checkpoint["best_val_loss"],
        checkpoint["initial_val_loss"],
        list(checkpoint["losses"]),
        int(checkpoint.get("tokens", 0)),
        float(checkpoint.get("seconds", 0.0)),
    )


def _train_step(
    model: Any, optimizer: Any, train: Sequence[Example], step: int, config: RunConfig, max_steps: int, pad_id: int
) -> tuple[float, int]:
    import torch

    lr = lr_at(step, config, max_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    total, tokens = 0.0, 0
    lengths = [len(e.input_ids) for e in train]
    for micro in range(config.grad_accumulation):
        batch = collate([train[i] for i in batch_indices(step, micro, config, lengths)], pad_id)
        loss = answer_loss(model, batch) / config.grad_accumulation
        loss.backward()
        total += float(loss.detach())
        tokens += int(batch["attention_mask"].sum())
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], GRAD_CLIP)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total, tokens


def run(
    base_model: Any,
    train: Sequence[Example],
    val: Sequence[Example],
    config: RunConfig,
    work_dir: Path,
    *,
    pad_id: int,
    threads: int = 0,
    resume: bool = False,
    progress: Callable[[Progress], None] | None = None,
    stop_after: int | None = None,
    max_seconds: float | None = None,
) -> RunResult:
    """Train LoRA on `base_model`; returns where the best adapter is.

    `stop_after` steps or `max_seconds` of wall time end the run early, with a
    validation pass and a checkpoint at that step, so `--resume` continues it.
    """
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(config.seed)
    model = _wrap_lora(base_model, config)
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.learning_rate, weight_decay=0.0
    )
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint, best_dir = work_dir / CHECKPOINT_FILE, work_dir / BEST_DIR
    if resume:
        if not checkpoint.is_file():
            raise ConfigError(f"--resume: no checkpoint at {checkpoint}", key="train.work_dir")
        state = _load_checkpoint(checkpoint, model, optimizer, config)
        log.info("train_resumed", step=state.step, best_val_loss=state.best_val_loss)
    else:
        state = _State(initial_val_loss=estimate_val_loss(model, val, config.batch_size, pad_id))
    resumed_from, max_steps = state.step, max_steps_for(config)
    started, seconds_before = time.monotonic(), state.seconds

    def stopping() -> bool:
        by_steps = stop_after is not None and state.step - resumed_from >= stop_after
        return by_steps or (max_seconds is not None and time.monotonic() - started >= max_seconds)

    while state.step < max_steps and not stopping():
        loss, used = _train_step(model, optimizer, train, state.step, config, max_steps, pad_id)
        state.step, state.tokens = state.step + 1, state.tokens + used
        state.seconds = seconds_before + time.monotonic() - started
        state.losses.append(loss)
        val_loss, last = None, state.step == max_steps or stopping()
        if state.step % config.eval_every == 0 or last:
            val_loss = estimate_val_loss(model, val, config.batch_size, pad_id)
            if val_loss is None or state.best_val_loss is None or val_loss < state.best_val_loss:
                state.best_val_loss = val_loss
                model.save_pretrained(str(best_dir))
        if state.step % config.checkpoint_every == 0 or last:
            _save_checkpoint(checkpoint, model, optimizer, state, config)
        if progress is not None:
            lr = lr_at(state.step - 1, config, max_steps)
            progress(Progress(state.step, max_steps, loss, lr, val_loss, state.best_val_loss))
    if not best_dir.is_dir():  # stopped before any evaluation: the latest adapter is all there is
        model.save_pretrained(str(best_dir))
    return RunResult(
        steps=state.step,
        max_steps=max_steps,
        best_val_loss=state.best_val_loss,
        first_loss=state.losses[0] if state.losses else None,
        last_loss=state.losses[-1] if state.losses else None,
        train_tokens=state.tokens,
        seconds=state.seconds,
        adapter_dir=best_dir,
        resumed_from=resumed_from,
        initial_val_loss=state.initial_val_loss,
        losses=state.losses,
    )
