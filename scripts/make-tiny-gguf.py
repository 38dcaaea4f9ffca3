#!/usr/bin/env python3
"""Writes a tiny llama-architecture GGUF model with random weights for warden's tests.

The tokenizer is generated too (SentencePiece style: control tokens, the 256 byte-fallback
tokens, printable ASCII and a few words), so nothing has to be downloaded. The text it writes is
gibberish; the process, its memory, load time and API are real llama.cpp.

usage: make-tiny-gguf.py OUT.gguf [--width 64] [--layers 2] [--ff 256] [--name tiny]
"""
import argparse

import numpy as np
import gguf


def vocab():
    tokens, scores, types = [], [], []

    def add(text, score, kind):
        tokens.append(text.encode("utf-8"))
        scores.append(score)
        types.append(kind)

    add("<unk>", 0.0, gguf.TokenType.UNKNOWN)
    add("<s>", 0.0, gguf.TokenType.CONTROL)
    add("</s>", 0.0, gguf.TokenType.CONTROL)
    for b in range(256):
        add(f"<0x{b:02X}>", 0.0, gguf.TokenType.BYTE)
    words = ["\u2581" + w for w in "the a of and to in is you that it he was for on are as with his they at be this".split()]
    pieces = ["\u2581"] + [chr(c) for c in range(33, 127)] + words
    for i, piece in enumerate(pieces):
        add(piece, -float(i + 1), gguf.TokenType.NORMAL)
    return tokens, scores, types


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--ff", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--name", default="tiny")
    args = ap.parse_args()

    tokens, scores, types = vocab()
    n_vocab, n_embd, n_ff = len(tokens), args.width, args.ff
    rng = np.random.default_rng(42)

    def weights(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    w = gguf.GGUFWriter(args.out, "llama")
    w.add_name(args.name)
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_block_count(args.layers)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(args.heads)
    w.add_head_count_kv(args.heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // args.heads)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    w.add_tensor("token_embd.weight", weights(n_vocab, n_embd))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output.weight", weights(n_vocab, n_embd))
    for i in range(args.layers):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(p + t + ".weight", weights(n_embd, n_embd))
        w.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", weights(n_ff, n_embd))
        w.add_tensor(p + "ffn_up.weight", weights(n_ff, n_embd))
        w.add_tensor(p + "ffn_down.weight", weights(n_embd, n_ff))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
