"""Calls keygate with the official openai SDK: plain, streamed (with and without usage), with a
revoked key, and with a key over its request limit."""
import os
import sys

import openai
from openai import OpenAI

base_url = os.environ["KEYGATE_BASE_URL"]
client = OpenAI(api_key=os.environ["KEYGATE_KEY"], base_url=base_url, max_retries=0)
messages = [{"role": "user", "content": "Hello"}]

plain = client.chat.completions.create(model="gpt-test", messages=messages)
print("plain:", plain.choices[0].message.content)
assert plain.usage.total_tokens == 12, plain.usage

# No stream_options: keygate asks the upstream for usage, and the client must not see it.
text = ""
for chunk in client.chat.completions.create(model="gpt-test", messages=messages, stream=True):
    assert chunk.choices, f"a chunk without choices reached the client: {chunk}"
    assert chunk.usage is None and "usage" not in chunk.model_fields_set, chunk
    if chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
print("stream:", text)

# Asked for: the usage chunk arrives, as from OpenAI.
usage = None
for chunk in client.chat.completions.create(
    model="gpt-test", messages=messages, stream=True, stream_options={"include_usage": True}
):
    if not chunk.choices:
        usage = chunk.usage
print("stream usage:", usage.total_tokens)

revoked = OpenAI(api_key=os.environ["KEYGATE_REVOKED_KEY"], base_url=base_url, max_retries=0)
try:
    revoked.chat.completions.create(model="gpt-test", messages=messages)
except openai.AuthenticationError as err:
    assert err.status_code == 401
    body = err.response.json()
    assert body == {"error": "Unauthorized", "message": "Invalid or inactive API key"}, body
    print("revoked: AuthenticationError")
else:
    print("revoked key was accepted", file=sys.stderr)
    sys.exit(1)

# A key allowed one request per window: the second raises the SDK's RateLimitError.
limited = OpenAI(api_key=os.environ["KEYGATE_LIMITED_KEY"], base_url=base_url, max_retries=0)
response = limited.chat.completions.with_raw_response.create(model="gpt-test", messages=messages)
assert response.headers["x-ratelimit-remaining-requests"] == "0", response.headers
try:
    limited.chat.completions.create(model="gpt-test", messages=messages)
except openai.RateLimitError as err:
    assert err.status_code == 429
    assert int(err.response.headers["retry-after"]) > 0
    assert err.response.json()["limit"] == "rate_limit_requests", err.response.text
    print("limited: RateLimitError")
else:
    print("a key over its limit was served", file=sys.stderr)
    sys.exit(1)
