"""Reads warden's /metrics with the official prometheus_client OpenMetrics parser (strict: a
malformed exposition raises) and prints what the Rust test checks, as JSON."""
import json
import sys
import urllib.request

from prometheus_client.openmetrics.parser import text_string_to_metric_families

with urllib.request.urlopen(sys.argv[1] + "/metrics") as r:
    text = r.read().decode()
families = {}
for f in text_string_to_metric_families(text):
    families[f.name] = {
        "type": f.type,
        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples],
    }
print(json.dumps(families))
