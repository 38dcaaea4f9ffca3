"""The official openai client against warden's Batch API: files.create, batches.create,
batches.retrieve (polled), files.content, batches.list. Usage: batch_client.py BASE_URL KEY"""
import io
import json
import sys
import time

from openai import OpenAI

base, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=30)
lines = [
    {"custom_id": f"q{i}", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "m", "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 4}}
    for i in range(2)
]
data = "\n".join(json.dumps(l) for l in lines).encode()
uploaded = client.files.create(file=("questions.jsonl", io.BytesIO(data)), purpose="batch")
assert uploaded.purpose == "batch" and uploaded.bytes == len(data), uploaded
batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                              completion_window="24h", metadata={"who": "python"})
assert batch.status == "validating", batch
deadline = time.time() + 30
while batch.status not in ("completed", "failed", "expired", "cancelled") and time.time() < deadline:
    time.sleep(0.1)
    batch = client.batches.retrieve(batch.id)
assert batch.status == "completed", batch
assert batch.request_counts.total == 2 and batch.request_counts.completed == 2, batch
answers = [json.loads(l) for l in client.files.content(batch.output_file_id).text.splitlines()]
assert [a["custom_id"] for a in answers] == ["q0", "q1"], answers
assert answers[0]["response"]["body"]["choices"][0]["message"]["content"], answers
assert any(b.id == batch.id for b in client.batches.list())
assert client.files.retrieve(uploaded.id).filename == "questions.jsonl"
print(f"batch completed: {len(answers)} answers")
