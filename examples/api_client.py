"""Call the HTTP API (start it first with `python api.py`) with nothing but the standard library.

    python examples/api_client.py [--url http://127.0.0.1:8000]
"""

import argparse
import json
import urllib.error
import urllib.request

parser = argparse.ArgumentParser(description="Two rounds of chat through api.py")
parser.add_argument("--url", default="http://127.0.0.1:8000")
parser.add_argument("--max-length", type=int, default=256)
parser.add_argument("--temperature", type=float, default=0.95, help="0: greedy, the same answer every time")
args = parser.parse_args()


def ask(prompt, history):
    body = json.dumps({"prompt": prompt, "history": history, "max_length": args.max_length,
                       "top_p": 0.7, "temperature": args.temperature}).encode("utf-8")
    request = urllib.request.Request(args.url + "/", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=600) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as err:  # 4xx: the server says what was wrong with the request
        raise SystemExit(f"{err.code}: {json.loads(err.read())['detail']}") from None


history = []
for prompt in ["你好", "晚上睡不着应该怎么办"]:
    result = ask(prompt, history)
    history = result["history"]  # send it back next time so the model remembers
    print(f"[{result['time']}] Q: {prompt}\nA: {result['response']}\n")
