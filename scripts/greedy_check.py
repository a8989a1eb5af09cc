"""Compares the greedy ids `phi3v generate --json` printed (first JSON object in FILE) with a
fixture case's `greedy_ids`. Usage: greedy_check.py FILE CASE.json [LABEL]"""
import json
import re
import sys

want = json.load(open(sys.argv[2]))["greedy_ids"]
text = open(sys.argv[1]).read()
m = re.search(r"\{.*\}", text, re.S)
got = None
if m:
    try:
        j = json.loads(m.group(0))
        got = j.get("token_ids") or j.get("ids") or j.get("tokens")
    except ValueError as e:
        print("not json:", e)
label = sys.argv[3] if len(sys.argv) > 3 else sys.argv[1]
print(label, "ids", got, "fixture", want, "EQUAL" if got == want else "DIFFERENT")
