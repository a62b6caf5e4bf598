"""camelid: run LLaMA-family language models locally on the CPU.

    import camelid
    model = camelid.load()                      # the default SmolLM2-135M-Instruct, or load("x.gguf")
    for chunk in model.stream("The capital of France is", max_tokens=20):
        print(chunk.text, end="", flush=True)
    chat = model.chat(system="You are concise.")
    print(chat.reply("Name three colours."))
"""

__version__ = "0.1.0"

from camelid import compile_cache

compile_cache.configure()

from camelid.api import Model, load  # noqa: E402
from camelid.chat.session import ChatSession
from camelid.errors import CamelidError
from camelid.sampling import SamplingParams
from camelid.tokenizer import Tokenizer, load_tokenizer

__all__ = ["load", "load_tokenizer", "Model", "ChatSession", "Tokenizer", "SamplingParams", "CamelidError"]
