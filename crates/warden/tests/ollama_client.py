"""The official `ollama` Python client, unchanged, against warden's Ollama front door with
llama-server behind it (run by tests/llama.rs). Exits non-zero with the failing check."""
import sys

import ollama

c = ollama.Client(host=sys.argv[1])
# The weights are random: without ignore_eos the model may pick its end token early.
opts = {"num_predict": 6, "ignore_eos": True, "temperature": 0}

names = [m.model for m in c.list().models]
assert "tiny" in names and "tiny-embed" in names, names

r = c.chat(model="tiny", messages=[{"role": "user", "content": "hello"}], options=opts)
assert r.done and r.message.role == "assistant" and r.message.content, r
assert r.eval_count == 6 and r.prompt_eval_count > 0 and r.total_duration > 0, r

chunks = list(c.chat(model="tiny", messages=[{"role": "user", "content": "hello"}], options=opts, stream=True))
assert len(chunks) > 2 and chunks[-1].done and not chunks[0].done, chunks
assert chunks[-1].eval_count == 6 and chunks[-1].done_reason == "length", chunks[-1]
assert "".join(ch.message.content for ch in chunks), chunks

g = c.generate(model="tiny", prompt="why is the sky blue", options=opts)
assert g.done and g.response and g.eval_count == 6, g
parts = list(c.generate(model="tiny", prompt="why", options=opts, stream=True))
assert parts[-1].done and "".join(p.response for p in parts), parts

e = c.embed(model="tiny-embed", input=["hello", "world"])
assert len(e.embeddings) == 2 and len(e.embeddings[0]) > 0, e

ps = c.ps().models
loaded = {m.model: m for m in ps}
assert "tiny" in loaded and loaded["tiny"].size > 0 and loaded["tiny"].expires_at is not None, ps

s = c.show("tiny")
assert "completion" in s.capabilities, s

try:
    c.pull("llama3")
    raise AssertionError("pull should be refused")
except ollama.ResponseError as err:
    assert err.status_code == 501 and "config" in err.error, err

try:
    c.chat(model="nope", messages=[{"role": "user", "content": "hi"}], stream=False)
    raise AssertionError("an unknown model should be refused")
except ollama.ResponseError as err:
    assert err.status_code == 404, err
print("OK")
