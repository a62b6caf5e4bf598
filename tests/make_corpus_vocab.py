"""Write the cut-down vocabularies test_tokenizer_pre.py tests every pre-tokenizer name in.

    python tests/make_corpus_vocab.py

tests/data/vocab/corpus-llama-bpe.gguf and corpus-gemma-4.gguf are llama.cpp's llama-bpe and gemma-4
test vocabularies (MIT, LICENSE-llama.cpp beside them) reduced to the tokens and merges that the
full vocabulary uses on the test texts (the corpus and the seeded random strings) under every
pre-tokenizer, plus the byte and special tokens. A BPE run only ever applies merges whose results
it keeps, so any vocabulary holding those merges (with their order) tokenizes the test texts exactly
as the full one; test_tokenizer_pre.py checks that with llama.cpp. Loading one takes a fraction of
the full vocabulary's time, in llama.cpp and in camelid. Run this again after changing the test texts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import gguf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from camelid.formats.gguf import read_metadata  # noqa: E402
from camelid.tokenizer.pretokenize import PRE_TOKENIZERS, Splitter, byte_level  # noqa: E402
from camelid.tokenizer.spm import SPACE  # noqa: E402
from test_tokenizer_pre import CORPUS, LLAMA_CPP_PRE_NAMES, VOCAB_DIR, random_strings  # noqa: E402

K = "tokenizer.ggml."


def applied_merges(word: str, ranks: dict[str, int]) -> tuple[list[str], list[str]]:
    """(merges applied, final symbols) of one BPE run: lowest rank first, leftmost on ties."""
    symbols, applied = list(word), []
    while len(symbols) > 1:
        best = min(((ranks[p], i) for i in range(len(symbols) - 1)
                    if (p := symbols[i] + " " + symbols[i + 1]) in ranks), default=None)
        if best is None:
            break
        i = best[1]
        applied.append(symbols[i] + " " + symbols[i + 1])
        symbols[i:i + 2] = [symbols[i] + symbols[i + 1]]
    return applied, symbols


def cut_down(fixture: str, byte_encode: bool) -> None:
    meta = read_metadata(VOCAB_DIR / f"ggml-vocab-{fixture}.gguf")
    tokens, types, merges = meta[K + "tokens"], meta[K + "token_type"], meta[K + "merges"]
    ranks = {m: r for r, m in reversed(list(enumerate(merges)))}
    ids = {t: i for i, t in reversed(list(enumerate(tokens)))}
    keep = {i for i, t in enumerate(types) if t != 1}                                   # special and byte tokens
    keep |= {i for i, t in enumerate(tokens) if len(t) == 1} if byte_encode else set()  # byte-level bytes
    words: set[str] = set()
    texts = CORPUS + [s for seed in range(len(LLAMA_CPP_PRE_NAMES)) for s in random_strings(seed)]
    for pre in {PRE_TOKENIZERS[name] for name in LLAMA_CPP_PRE_NAMES}:
        if pre.byte_encode == byte_encode:
            split = Splitter(pre)
            for text in texts:
                words.update(split(text.replace(" ", SPACE) if pre.escape_whitespaces else text))
    used: set[str] = set()
    for word in words:
        word = byte_level(word) if byte_encode else word
        applied, symbols = applied_merges(word, ranks)
        used.update(t for t in (word, *symbols) if t in ids)
        for m in applied:
            left, right = m.split(" ", 1)
            used.update((left, right, left + right))
    keep |= {ids[t] for t in used}
    order = sorted(keep)
    new_id = {old: new for new, old in enumerate(order)}
    kept = {tokens[i] for i in order}
    kept_merges = [m for m in merges if all(p in kept for p in (*m.split(" ", 1), m.replace(" ", "", 1)))]

    out = VOCAB_DIR / f"corpus-{fixture}.gguf"
    writer = gguf.GGUFWriter(str(out), meta["general.architecture"])
    writer.add_name(f"{fixture}, cut down to the test corpus")
    writer.add_tokenizer_model(meta[K + "model"])
    if K + "pre" in meta:
        writer.add_tokenizer_pre(meta[K + "pre"])
    writer.add_token_list([tokens[i] for i in order])
    writer.add_token_types([types[i] for i in order])
    if K + "scores" in meta:
        writer.add_token_scores([meta[K + "scores"][i] for i in order])
    writer.add_token_merges(kept_merges)
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("unknown_token_id", writer.add_unk_token_id), ("padding_token_id", writer.add_pad_token_id)):
        if K + key in meta:
            add(new_id[meta[K + key]])
    for key, add in (("add_bos_token", writer.add_add_bos_token), ("add_space_prefix", writer.add_add_space_prefix)):
        if K + key in meta:
            add(meta[K + key])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{out.name}: {len(order)} of {len(tokens)} tokens, {len(kept_merges)} of {len(merges)} merges")


if __name__ == "__main__":
    cut_down("llama-bpe", byte_encode=True)
    cut_down("gemma-4", byte_encode=False)
