"""Merge PEFT LoRA adapters into a Hugging Face LLaMA checkpoint, one tensor at a time.

An adapter directory holds `adapter_config.json` and `adapter_model.safetensors|bin`. Its tensors are
named after the PEFT-wrapped model: `base_model.model.<module>.lora_A[.<adapter>].weight` (r, n_in)
and `lora_B` (n_out, r) for a LoRA on `<module>.weight`, `lora_embedding_A/B` for a LoRA on an
embedding, and full tensors (`<module>.weight`, `<module>.modules_to_save[.<adapter>].weight`, or
`<module>.base_layer.weight` from `save_embedding_layers`), which replace the base's before its LoRA.
Each LoRA adds scale·B@A to its weight (transposed when `fan_in_fan_out`), scale = lora_alpha/r, or
lora_alpha/sqrt(r) with `use_rslora`, as PEFT's merge does. Adapters apply in order, so Chinese-Alpaca-Plus is LLaMA-Plus then Alpaca-Plus.

Everything is checked when the merge is opened, from the shapes alone, before any output is written.
The merged model is a `Checkpoint` whose tensors are computed on demand: loading one reads that base
tensor and that adapter's A and B (or its replacement) only, so a writer that streams tensors keeps
peak memory at a small multiple of the largest tensor.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from camelid.errors import CamelidError
from camelid.formats.checkpoint import open_checkpoint
from camelid.formats.hf import Checkpoint, TensorSource, open_tensor_files

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
VOCAB_TENSORS = (EMBED, LM_HEAD)

_PREFIX = "base_model.model."
# <module>.lora_A.weight, <module>.lora_A.default.weight; A is (r, n_in), B is (n_out, r)
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")
# <module>.lora_embedding_A[.default]; A is (r, n_vocab), B is (n_embd, r), delta = (B@A).T
_LORA_EMBEDDING = re.compile(r"^(?P<module>.+)\.lora_embedding_(?P<ab>[AB])(?:\.[^.]+)?$")
# <module>.modules_to_save[.default].weight: a full replacement in PEFT's in-memory naming
_MODULES_TO_SAVE = re.compile(r"^(?P<module>.+)\.modules_to_save(?:\.[^.]+)?\.(?P<param>weight|bias)$")


@dataclass(frozen=True)
class LoraPair:
    """One LoRA on one base tensor: adapter tensor names, scale, and whether B@A is transposed."""

    a_name: str
    b_name: str
    scale: float
    transpose: bool


@dataclass
class Adapter:
    """One PEFT LoRA adapter, opened: its tensors stay on disk until a merge step loads them."""

    path: Path
    tensors: TensorSource
    loras: dict[str, LoraPair]  # base tensor name -> its LoRA
    replacements: dict[str, str]  # base tensor name -> adapter tensor that replaces it
    tokenizer_dir: Path | None  # the adapter's own tokenizer, if it ships one
    tokenizer_size: int | None


def _read_adapter_config(path: Path) -> dict:
    config_path = path / "adapter_config.json"
    if not path.is_dir():
        raise CamelidError(f"LoRA adapter not found: {path} is not a directory. Pass the directory holding adapter_config.json.")
    if not config_path.is_file():
        raise CamelidError(f"{path} has no adapter_config.json; pass a PEFT LoRA adapter directory (adapter_config.json + adapter_model.bin or .safetensors).")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CamelidError(f"cannot read {config_path}: {exc}. It should be the JSON file PEFT's save_pretrained writes.") from None
    if not isinstance(config, dict):
        raise CamelidError(f"{config_path} is not a JSON object; it should be the file PEFT's save_pretrained writes.")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise CamelidError(f"{path} is a {peft_type} adapter; merge-lora merges LoRA adapters only.")
    for key, what in (("use_dora", "DoRA"), ("lora_bias", "LoRA bias")):
        if config.get(key):
            raise CamelidError(f"{path} uses {what} ({key}: true), which merge-lora does not support; use an adapter trained without it.")
    return config


def _pattern_value(patterns: dict, module: str, default):
    """PEFT's rank_pattern/alpha_pattern lookup: the first key that matches the end of the module name."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _scale(config: dict, module: str, path: Path) -> tuple[int, float]:
    r = _pattern_value(config.get("rank_pattern"), module, config.get("r", 8))
    alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", 8))
    if not isinstance(r, int) or r <= 0:
        raise CamelidError(f"{path}/adapter_config.json has r={r!r} for {module}; a LoRA rank must be a positive integer.")
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    return r, float(scale)


def count_tokenizer_tokens(directory: Path) -> int | None:
    """Number of tokens of the tokenizer in `directory` (as len() of the HF tokenizer), or None if it has none.

    SentencePiece `tokenizer.model` pieces (or `tokenizer.json`'s vocabulary) plus the added tokens of
    `added_tokens.json` / `tokenizer_config.json` whose ids lie beyond them (Chinese-Alpaca's [PAD]).
    """
    ids: list[int] = []
    spm = directory / "tokenizer.model"
    tok_json = directory / "tokenizer.json"
    if spm.is_file():
        from camelid.tools.hf_vocab import read_sentencepiece

        size = len(read_sentencepiece(spm).pieces)
    elif tok_json.is_file():
        try:
            data = json.loads(tok_json.read_text(encoding="utf-8"))
            size = len(data["model"]["vocab"])
            ids += [int(t["id"]) for t in data.get("added_tokens", [])]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CamelidError(f"cannot read the vocabulary of {tok_json}: {exc}.") from None
    else:
        return None
    added = directory / "added_tokens.json"
    tok_config = directory / "tokenizer_config.json"
    try:
        if added.is_file():
            ids += [int(i) for i in json.loads(added.read_text(encoding="utf-8")).values()]
        if tok_config.is_file():
            ids += [int(i) for i in json.loads(tok_config.read_text(encoding="utf-8")).get("added_tokens_decoder", {})]
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise CamelidError(f"cannot read the added tokens in {directory}: {exc}.") from None
    return max([size] + [i + 1 for i in ids])


def open_adapter(path: str | Path) -> Adapter:
    """Open a PEFT LoRA adapter directory and sort its tensors into LoRA pairs and full replacements.

    Names are mapped to the HF base's tensor names; shapes are checked against the base later, by
    `merge_adapters`. Tensors are not loaded.
    """
    path = Path(path)
    config = _read_adapter_config(path)
    files = [path / name for name in ADAPTER_FILES if (path / name).is_file()]
    if not files:
        raise CamelidError(f"{path} has adapter_config.json but no adapter_model.safetensors or adapter_model.bin; copy the adapter's weights there.")
    tensors = open_tensor_files(files[:1])
    fan_in_fan_out = bool(config.get("fan_in_fan_out", False))
    halves: dict[str, dict[str, str]] = {}
    embedding_loras: set[str] = set()
    replacements: dict[str, str] = {}
    for name in tensors.names():
        if not name.startswith(_PREFIX):
            raise CamelidError(f"{path}: tensor {name} does not start with {_PREFIX!r}; this is not a PEFT adapter for a causal LM.")
        key = name[len(_PREFIX):]
        if ".lora_magnitude_vector" in key:
            raise CamelidError(f"{path} is a DoRA adapter ({name}); merge-lora does not support DoRA.")
        match = _LORA.match(key) or _LORA_EMBEDDING.match(key)
        if match:
            target = match["module"] + ".weight"
            halves.setdefault(target, {})[match["ab"]] = name
            if match.re is _LORA_EMBEDDING:
                embedding_loras.add(target)
            continue
        if ".lora_" in key:
            raise CamelidError(f"{path}: unexpected LoRA tensor {name}; merge-lora knows lora_A/lora_B weights only.")
        match = _MODULES_TO_SAVE.match(key)
        # <module>.base_layer.weight: the (possibly resized) weight under a LoRA, saved with save_embedding_layers
        replacements[f"{match['module']}.{match['param']}" if match else key.replace(".base_layer.", ".")] = name
    loras = {}
    for target, pair in halves.items():
        if set(pair) != {"A", "B"}:
            missing = "lora_B" if "A" in pair else "lora_A"
            raise CamelidError(f"{path}: the LoRA on {target} has no {missing} tensor; the adapter file is incomplete.")
        module = target.removesuffix(".weight")
        r, scale = _scale(config, module, path)
        rank_a, rank_b = tensors.shape(pair["A"])[0], tensors.shape(pair["B"])[-1]
        if not rank_a == rank_b == r:
            raise CamelidError(
                f"{path}: the LoRA on {target} has rank {rank_a} (lora_A) and {rank_b} (lora_B) but adapter_config.json says r={r}."
            )
        transpose = fan_in_fan_out or target in embedding_loras
        loras[target] = LoraPair(pair["A"], pair["B"], scale, transpose)
    if not loras and not replacements:
        raise CamelidError(f"{path}: the adapter file has no tensors.")
    has_tokenizer = (path / "tokenizer.model").is_file() or (path / "tokenizer.json").is_file()
    tok_dir = path if has_tokenizer else None
    tok_size = count_tokenizer_tokens(path) if has_tokenizer else None
    return Adapter(path, tensors, loras, replacements, tok_dir, tok_size)


@dataclass(frozen=True)
class _Step:
    adapter: Adapter
    replace: str | None = None  # adapter tensor that replaces the weight
    lora: LoraPair | None = None  # or the LoRA added to it


class MergedTensors(TensorSource):
    """A TensorSource over the base's tensors with the adapters' replacements and LoRAs applied.

    load(name) returns the base tensor unchanged (its own dtype) when no adapter touches it, the
    replacement as stored when an adapter replaces it, and float32 W + Σ scale·B@A otherwise.
    """

    def __init__(self, base: TensorSource, steps: dict[str, list[_Step]], shapes: dict[str, tuple[int, ...]]):
        self._base = base
        self._steps = steps
        self._shapes = shapes

    def names(self) -> list[str]:
        return self._base.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes.get(name) or self._base.shape(name)

    def load(self, name: str) -> np.ndarray:
        weight = None
        for step in self._steps.get(name, ()):
            if step.replace is not None:
                weight = step.adapter.tensors.load(step.replace)
                continue
            if weight is None:
                weight = self._base.load(name)
            weight = _add_lora(weight, step.adapter.tensors, step.lora)
        return self._base.load(name) if weight is None else weight


def _add_lora(weight: np.ndarray, tensors: TensorSource, lora: LoraPair) -> np.ndarray:
    # weight (n_out, n_in); A (r, n_in); B (n_out, r); float32 accumulation as PEFT does on CPU
    if weight.dtype != np.float32 or not weight.flags.writeable:
        weight = weight.astype(np.float32)
    a = tensors.load(lora.a_name).astype(np.float32, copy=False)
    b = tensors.load(lora.b_name).astype(np.float32, copy=False)
    delta = b @ a
    delta *= np.float32(lora.scale)
    weight += delta.T if lora.transpose else delta
    return weight


def _shape_error(adapter: Adapter, name: str, what: str, got: tuple, want: tuple) -> CamelidError:
    return CamelidError(
        f"LoRA {adapter.path} does not fit this base model: its {what} for {name} has shape {tuple(got)} "
        f"but the base's {name} has shape {tuple(want)}. Use the base model the adapter was trained on."
    )


def merge_adapters(base: Checkpoint, adapters: list[Adapter]) -> Checkpoint:
    """The base checkpoint with `adapters` applied in order, checked from shapes, computed lazily.

    Full replacements (modules_to_save) may change the vocabulary size of embed_tokens/lm_head
    only; the config's vocab_size follows, and the tokenizer becomes that of the last adapter
    that ships one. Raises CamelidError for an adapter made for another base.
    """
    base_names = set(base.tensors.names())
    shapes: dict[str, tuple[int, ...]] = {}
    steps: dict[str, list[_Step]] = {}
    for adapter in adapters:
        unknown = sorted(set(adapter.loras) - base_names) + sorted(set(adapter.replacements) - base_names)
        if unknown:
            raise CamelidError(
                f"LoRA {adapter.path} targets {unknown[0].removesuffix('.weight')}, which the base model does not have "
                f"({len(unknown)} unknown module(s)); the adapter was made for another model."
            )
        for name, source in adapter.replacements.items():
            got, want = tuple(adapter.tensors.shape(source)), shapes.get(name) or tuple(base.tensors.shape(name))
            resizable = name in VOCAB_TENSORS and len(got) == 2 and got[1:] == want[1:]
            if got != want and not resizable:
                raise _shape_error(adapter, name, "full tensor (modules_to_save)", got, want)
            shapes[name] = got
            steps[name] = [_Step(adapter, replace=source)]
        for name, lora in adapter.loras.items():
            a, b = adapter.tensors.shape(lora.a_name), adapter.tensors.shape(lora.b_name)
            delta = (b[0], a[1])[::-1] if lora.transpose else (b[0], a[1])
            want = shapes.get(name) or tuple(base.tensors.shape(name))
            if tuple(delta) != want:
                raise _shape_error(adapter, name, "LoRA update B@A", delta, want)
            steps.setdefault(name, []).append(_Step(adapter, lora=lora))
        _check_adapter_vocab(adapter)
    config = dict(base.config)
    tokenizer_dir = base.tokenizer_dir
    for adapter in adapters:
        tokenizer_dir = adapter.tokenizer_dir or tokenizer_dir
    if EMBED in base_names:
        n_vocab = (shapes.get(EMBED) or tuple(base.tensors.shape(EMBED)))[0]
        _check_vocab(base, shapes, n_vocab, tokenizer_dir, base_names)
        config["vocab_size"] = n_vocab
    return dataclasses.replace(base, config=config, tensors=MergedTensors(base.tensors, steps, shapes), tokenizer_dir=tokenizer_dir)


def _check_adapter_vocab(adapter: Adapter) -> None:
    if EMBED not in adapter.replacements:
        return
    rows = adapter.tensors.shape(adapter.replacements[EMBED])[0]
    if adapter.tokenizer_size is None:
        return
    if adapter.tokenizer_size != rows:
        raise CamelidError(
            f"LoRA {adapter.path}: its embeddings have {rows} rows but its tokenizer has {adapter.tokenizer_size} tokens. "
            "Use each adapter with its own tokenizer (Chinese-LLaMA's with the LLaMA LoRA, Chinese-Alpaca's with the Alpaca LoRA)."
        )


def _check_vocab(base: Checkpoint, shapes: dict, n_vocab: int, tokenizer_dir: Path, base_names: set[str]) -> None:
    if LM_HEAD in base_names:
        head_rows = (shapes.get(LM_HEAD) or tuple(base.tensors.shape(LM_HEAD)))[0]
        if head_rows != n_vocab:
            raise CamelidError(
                f"after merging, embed_tokens has {n_vocab} rows but lm_head has {head_rows}: an adapter resized one "
                "without the other. Both must come in modules_to_save."
            )
    base_rows = base.tensors.shape(EMBED)[0]
    if tokenizer_dir == base.tokenizer_dir:
        if n_vocab != base_rows:
            raise CamelidError(
                f"the merged model has a {n_vocab}-token vocabulary (the base has {base_rows}) but no adapter ships a tokenizer; "
                "put the adapter's tokenizer.model beside its adapter_config.json."
            )
        return
    size = count_tokenizer_tokens(Path(tokenizer_dir))
    if size > n_vocab:
        raise CamelidError(
            f"the tokenizer in {tokenizer_dir} has {size} tokens but the merged model has only {n_vocab} embedding rows; "
            "the adapter's tokenizer and weights do not belong together."
        )


def open_merged(base: str | Path, loras: list[str | Path]) -> Checkpoint:
    """Open the HF checkpoint `base` and the LoRA adapter directories `loras`, and merge them lazily."""
    if not loras:
        raise CamelidError("give at least one LoRA adapter with --lora.")
    checkpoint = open_checkpoint(base)
    return merge_adapters(checkpoint, [open_adapter(path) for path in loras])


def merge_lora(base: str | Path, loras: list[str | Path], out: str | Path, outtype: str = "f16", fmt: str = "gguf",
               progress: bool = True) -> None:
    """Merge `loras` into `base` in order and write the result as GGUF (`fmt="gguf"`) or an HF safetensors directory.

    GGUF goes through the converter, so `outtype` may be any type it writes (quantized in the same
    pass); safetensors takes f32, f16 or bf16. Tensors stream one at a time; the output appears only
    when complete.
    """
    if fmt not in ("gguf", "safetensors"):
        raise CamelidError(f"unknown output format {fmt!r}; use gguf or safetensors.")
    merged = open_merged(base, loras)
    if fmt == "safetensors":
        from camelid.formats.safetensors_writer import save_checkpoint

        save_checkpoint(merged, out, outtype, progress=progress)
    else:
        from camelid.tools.convert import convert_checkpoint

        convert_checkpoint(merged, out, outtype=outtype, progress=progress)
