"""general.architecture -> the network class that runs it."""

from __future__ import annotations

from camelid.formats.gguf import GGUFFile
from camelid.model.gemma3 import Gemma3Model
from camelid.model.llama import LlamaModel
from camelid.model.phi3 import Phi3Model
from camelid.model.qwen3 import Qwen3Model

NETWORKS: dict[str, type[LlamaModel]] = {"llama": LlamaModel, "qwen2": LlamaModel, "qwen3": Qwen3Model, "gemma3": Gemma3Model,
                                     "phi3": Phi3Model}


def load_network(gguf: GGUFFile, show_progress: bool = True) -> LlamaModel:
    """The network for the file's architecture; an unsupported one raises CamelidError from Config
    (naming the architectures camelid runs)."""
    arch = gguf.metadata.get("general.architecture")
    cls = NETWORKS.get(arch, LlamaModel) if isinstance(arch, str) else LlamaModel
    return cls(gguf, show_progress=show_progress)
