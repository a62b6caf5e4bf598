"""Tiny Hugging Face / Meta LLaMA checkpoints made at test time (transformers, torch, sentencepiece).

- `train_spm_tokenizer(dir, vocab_size=400)`: a SentencePiece BPE model trained on `CORPUS` (Chinese
  and English) with LLaMA's settings (byte fallback, identity normalization, digits split), written as
  `tokenizer.model` + `tokenizer_config.json` + `special_tokens_map.json` (LlamaTokenizer's files).
- `make_hf_checkpoint(dir, tokenizer_dir, ...)`: a random LlamaForCausalLM saved with save_pretrained
  (safetensors or pytorch_model.bin), tokenizer files copied in; returns the torch model (float32).
- `write_meta_checkpoint(model, dir, tokenizer_dir, n_shards)`: the same weights in Meta's original
  layout (consolidated.NN.pth split along the model-parallel dimensions, interleaved q/k rows,
  params.json, tokenizer.model).
Sizes are parameters, so other tests can ask for e.g. a 32000-row embedding with a small tokenizer
(the embedding rows beyond the tokenizer's pieces become [PADi] tokens in GGUF).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

CORPUS_EN = """\
The llama is a domesticated South American camelid, widely used as a meat and pack animal by Andean
cultures since the pre-Columbian era. Llamas are social animals and live with others as a herd. Their
wool is soft and contains only a small amount of lanolin. Llamas can learn simple tasks after a few
repetitions. When using a pack, they can carry about 25 to 30% of their body weight for 8 to 13 km.
The name llama was adopted by European settlers from native Peruvians. The ancestors of llamas are
thought to have originated from the Great Plains of North America about 40 million years ago, and
subsequently migrated to South America about three million years ago during the Great American
Interchange. By the end of the last ice age, camelids were extinct in North America. As of 2007, there
were over seven million llamas and alpacas in South America, and due to importation from South
America in the late 20th century, there are now over 158,000 llamas and 100,000 alpacas in the United
States and Canada. A language model reads text as tokens and predicts the next token, one at a time.
Hello world! How are you today? I am fine, thank you. The quick brown fox jumps over the lazy dog.
Programs print numbers like 12345 and 3.14159, and people write emails, stories, poems and code.
"""
CORPUS_ZH = """\
羊驼是一种生活在南美洲的骆驼科动物，性情温顺，常被用来驮运货物。羊驼的毛柔软而保暖，可以织成毛衣和围巾。
在安第斯山区，人们饲养羊驼已经有几千年的历史。大语言模型把文字切分成词元，然后一次预测一个词元。
今天天气很好，我们一起去公园散步吧。你好，世界！我喜欢学习中文和英文，也喜欢读书、写字和画画。
中国的首都是北京，上海是一个国际化的大城市。春天来了，花开了，小鸟在树上唱歌。人工智能正在改变我们的生活。
这个模型可以在普通的电脑上运行，不需要显卡。请把这段话翻译成英文。谢谢你的帮助，祝你有美好的一天。
"""
CORPUS = (CORPUS_EN + CORPUS_ZH) * 3

CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + m['content'] + ' [/INST]' }}"
                 "{% else %}{{ ' ' + m['content'] + eos_token }}{% endif %}{% endfor %}")


def train_spm_tokenizer(out_dir: str | Path, vocab_size: int = 500, user_defined: tuple[str, ...] = (),
                        text: str = CORPUS) -> Path:
    """Train a LLaMA-style SentencePiece BPE tokenizer on `text`; write tokenizer.model and its HF configs to out_dir."""
    import sentencepiece as spm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    corpus.write_text(text, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(out_dir / "tokenizer"), model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, character_coverage=0.98, normalization_rule_name="identity",
        remove_extra_whitespaces=False, split_digits=True, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, user_defined_symbols=list(user_defined),
        hard_vocab_limit=False, minloglevel=2, num_threads=1,
    )
    corpus.unlink()
    (out_dir / "tokenizer.vocab").unlink()
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": True, "model_max_length": 256,
        "chat_template": CHAT_TEMPLATE,
    }, ensure_ascii=False, indent=1), encoding="utf-8")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}), encoding="utf-8")
    return out_dir


def spm_piece_count(tokenizer_dir: str | Path) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(Path(tokenizer_dir) / "tokenizer.model")).get_piece_size()


def random_llama(n_vocab: int, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                 intermediate: int = 128, seed: int = 0, tie: bool = False, rope_theta: float = 10000.0,
                 max_positions: int = 256, arch: str = "llama"):
    """A float32 LlamaForCausalLM (or Qwen2ForCausalLM for arch="qwen2") with random weights scaled so
    logits are O(3) and attention is not uniform."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_class, model_class = (Qwen2Config, Qwen2ForCausalLM) if arch == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    config = config_class(
        vocab_size=n_vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
        rms_norm_eps=1e-5, rope_theta=rope_theta, tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = model_class(config).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((1.0 if "norm" in name else 0.0) + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                std = 0.35 if "embed" in name or "lm_head" in name else (0.2 if ("q_proj" in name or "k_proj" in name) else 0.12)
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model


def copy_tokenizer(tokenizer_dir: str | Path, out_dir: str | Path) -> None:
    for f in Path(tokenizer_dir).iterdir():
        if f.is_file():
            shutil.copy(f, Path(out_dir) / f.name)


def make_hf_checkpoint(out_dir: str | Path, tokenizer_dir: str | Path, *, n_vocab: int | None = None,
                       safetensors: bool = True, **model_kwargs):
    """Save a random tiny LlamaForCausalLM (see random_llama) with the tokenizer in tokenizer_dir; return the model.

    n_vocab defaults to the tokenizer's piece count; safetensors=False writes pytorch_model.bin.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = random_llama(n_vocab or spm_piece_count(tokenizer_dir), **model_kwargs)
    model.save_pretrained(out_dir, safe_serialization=safetensors)
    copy_tokenizer(tokenizer_dir, out_dir)
    return model


def save_pytorch_bin(model, out_dir: str | Path, tokenizer_dir: str | Path) -> None:
    """The same model as a pytorch_model.bin (torch.save of the state dict) beside config.json."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(out_dir)
    torch.save(model.state_dict(), out_dir / "pytorch_model.bin")
    copy_tokenizer(tokenizer_dir, out_dir)


def _interleave(w, n_head: int):
    """HF rotate-half q/k rows -> Meta's interleaved pairs (the inverse of transformers' conversion permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def write_meta_checkpoint(model, out_dir: str | Path, tokenizer_dir: str | Path, n_shards: int = 1) -> Path:
    """Write `model`'s weights in Meta's layout: consolidated.NN.pth (model-parallel slices), params.json, tokenizer.model."""
    import torch

    cfg = model.config
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    meta: dict[str, torch.Tensor] = {"tok_embeddings.weight": sd["model.embed_tokens.weight"],
                                     "norm.weight": sd["model.norm.weight"], "output.weight": sd["lm_head.weight"]}
    names = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
             "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
             "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm"}
    for i in range(cfg.num_hidden_layers):
        for hf, m in names.items():
            w = sd[f"model.layers.{i}.{hf}.weight"]
            if hf == "self_attn.q_proj":
                w = _interleave(w, cfg.num_attention_heads)
            elif hf == "self_attn.k_proj":
                w = _interleave(w, cfg.num_key_value_heads)
            meta[f"layers.{i}.{m}.weight"] = w
    meta["rope.freqs"] = torch.ones(cfg.hidden_size // cfg.num_attention_heads // 2)
    for shard in range(n_shards):
        part = {}
        for name, w in meta.items():
            if w.ndim == 1:
                part[name] = w.clone()
                continue
            axis = 1 if name == "tok_embeddings.weight" or name.endswith(("attention.wo.weight", "feed_forward.w2.weight")) else 0
            part[name] = torch.chunk(w, n_shards, dim=axis)[shard].clone().contiguous()
        torch.save(part, out_dir / f"consolidated.{shard:02d}.pth")
    (out_dir / "params.json").write_text(json.dumps({
        "dim": cfg.hidden_size, "n_layers": cfg.num_hidden_layers, "n_heads": cfg.num_attention_heads,
        "n_kv_heads": cfg.num_key_value_heads, "multiple_of": 32, "norm_eps": cfg.rms_norm_eps,
        "vocab_size": cfg.vocab_size, "max_seq_len": cfg.max_position_embeddings,
    }))
    shutil.copy(Path(tokenizer_dir) / "tokenizer.model", out_dir / "tokenizer.model")
    return out_dir


def hf_logits(model, ids: list[int]) -> np.ndarray:
    """transformers' logits for one sequence, computed in float64: (n_tokens, n_vocab)."""
    import copy

    import torch

    with torch.no_grad():
        m = copy.deepcopy(model).double()
        return m(torch.tensor([ids])).logits[0].numpy()


_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BPE_SPECIALS = {"llama3": ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"),
                "smollm": ("<|endoftext|>", "<|im_start|>", "<|im_end|>")}


def train_bpe_tokenizer(out_dir: str | Path, style: str = "smollm", vocab_size: int = 400, text: str = CORPUS) -> Path:
    """Train a byte-level BPE tokenizer.json with the `tokenizers` package, pre-tokenized like LLaMA-3 or SmolLM.

    Writes tokenizer.json and tokenizer_config.json (bos/eos, add_bos for LLaMA-3, a ChatML template).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specials = BPE_SPECIALS[style]
    tok = Tokenizer(models.BPE(ignore_merges=style == "llama3"))
    if style == "llama3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([line for line in text.splitlines(keepends=True)], trainer)
    if style == "llama3":
        bos = specials[0]
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    tok.save(str(out_dir / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": specials[0],
              "eos_token": specials[2] if style == "llama3" else specials[0],
              "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return out_dir


def bpe_token_count(tokenizer_dir: str | Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json")).get_vocab_size()
