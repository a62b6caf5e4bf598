"""What one fuzz case runs on a mutated file: the library calls behind the CLI, stopping before kernels.

- gguf, legacy: `camelid inspect` (describe, then the text and the JSON output) and `camelid run`'s load
  (camelid.api.Model: the file, Config, every weight's shape and type, tokenizer, chat template) with the
  weights' layout and kernel warm-up left out, then the tokenizer on a short text and back.
- safetensors, pytorch: what `camelid convert` reads first: the headers, then every tensor's data.
- chat: the chat's /load reader.
A case passes when each step returns or raises a CamelidError whose message is one line.
"""

from __future__ import annotations

import contextlib
import io
import json

TEXT = "Hello world, \u4f60\u597d <|im_start|> \u2581 \U0001f999"


def _no_weight_layout(self, show_progress: bool) -> None:
    """Stands in for LlamaModel._prepare_weights (lays weights out and runs kernels): the fuzz checks loading."""


def inspect_file(path: str) -> None:
    from camelid.cli import inspect

    d = inspect.describe(path)
    with contextlib.redirect_stdout(io.StringIO()):
        inspect._print_text(d, True)
        print(json.dumps(d, ensure_ascii=False, indent=1))


def load_model(path: str) -> None:
    from camelid.api import Model
    from camelid.model import llama

    llama.LlamaModel._prepare_weights = _no_weight_layout
    model = Model(path, n_ctx=64, show_progress=False)
    ids = model.tokenize(TEXT, add_special=True, parse_special=True)
    model.detokenize(ids)
    model.template.render([{"role": "user", "content": "hi"}], add_generation_prompt=True)


def checkpoint(path: str) -> None:
    from camelid.formats.hf import open_tensor_files

    source = open_tensor_files([path])
    for name in source.names():
        source.shape(name)
        source.load(name)


def chat(path: str) -> None:
    from camelid.chat.transcript import read_chat

    read_chat(path)


# format -> the steps of one case; each runs even when an earlier one refused the file
TARGETS = {"gguf": (inspect_file, load_model), "legacy": (inspect_file, load_model), "safetensors": (checkpoint,),
           "pytorch": (checkpoint,), "chat": (chat,)}


def warm_up() -> None:
    """Import everything a case may reach and load the Numba function of legacy block conversion, so a
    forked case pays neither import nor compile time and memory."""
    import jinja2.sandbox  # noqa: F401
    import numpy as np
    from gguf import GGMLQuantizationType

    from camelid.formats.legacy_blocks import convert_blocks

    convert_blocks(np.zeros((1, 20), np.uint8), GGMLQuantizationType.Q4_0, 1)

    import camelid.api  # noqa: F401
    import camelid.chat.transcript  # noqa: F401
    import camelid.cli.inspect  # noqa: F401
    import camelid.formats.hf  # noqa: F401
    import camelid.formats.legacy  # noqa: F401
    import camelid.formats.safe_pickle  # noqa: F401
    import camelid.model.llama  # noqa: F401
