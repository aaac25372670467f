"""Calls keygate with the official anthropic SDK as Claude Code does (the key as a Bearer
token, ANTHROPIC_AUTH_TOKEN-style) and as the SDK does by default (x-api-key): a message, a
stream, count_tokens, a key over its request limit (RateLimitError), and a failover past an
overloaded upstream."""
import os
import sys

import anthropic
from anthropic import Anthropic

base_url = os.environ["KEYGATE_BASE_URL"]
messages = [{"role": "user", "content": "Hello"}]

# Claude Code's way: ANTHROPIC_AUTH_TOKEN, sent as Authorization: Bearer.
bearer = Anthropic(auth_token=os.environ["KEYGATE_KEY"], base_url=base_url, max_retries=0)
plain = bearer.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=messages)
print("plain:", plain.content[0].text)
assert plain.usage.cache_read_input_tokens == 3000, plain.usage

# The SDK's default: x-api-key.
client = Anthropic(api_key=os.environ["KEYGATE_KEY"], base_url=base_url, max_retries=0)
with client.messages.stream(model="claude-sonnet-4-5", max_tokens=64, messages=messages) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
print("stream:", text)
assert final.usage.output_tokens == 15, final.usage

counted = client.messages.count_tokens(model="claude-sonnet-4-5", messages=messages)
print("count_tokens:", counted.input_tokens)

# A beta request (Claude Code sends ?beta=true and anthropic-beta).
beta = client.beta.messages.create(
    model="claude-sonnet-4-5", max_tokens=64, messages=messages, betas=["prompt-caching-2024-07-31"]
)
print("beta:", beta.content[0].text)

# A key allowed one request per window: the second raises the SDK's RateLimitError.
limited = Anthropic(api_key=os.environ["KEYGATE_LIMITED_KEY"], base_url=base_url, max_retries=0)
limited.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=messages)
try:
    limited.messages.create(model="claude-sonnet-4-5", max_tokens=64, messages=messages)
except anthropic.RateLimitError as err:
    assert err.status_code == 429
    body = err.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error", body
    print("limited: RateLimitError:", body["error"]["message"])
else:
    print("a key over its limit was served", file=sys.stderr)
    sys.exit(1)

# A model no upstream serves: NotFoundError with keygate's reason.
try:
    client.messages.create(model="gpt-4o", max_tokens=64, messages=messages)
except anthropic.NotFoundError as err:
    print("unrouted: NotFoundError:", err.response.json()["error"]["message"])
else:
    print("an unrouted model was served", file=sys.stderr)
    sys.exit(1)
