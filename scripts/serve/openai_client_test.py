"""The official `openai` Python package against a running `braid serve` (f32, CPU).

Usage: python openai_client_test.py BASE_URL API_KEY GOLDEN_JSON

`client.embeddings.create` with a string, a list of strings and token ids (as `/tokenize` gives them)
must return the golden fixture's vectors (cosine >= 0.99999); TEI's `/embed` over plain HTTP must
return the same vectors as the OpenAI route; a wrong key must raise the client's AuthenticationError.
Prints one line per check and a closing 'N passed, N failed' line; exits 1 on any failure.
"""

import json
import math
import sys
import urllib.request

import openai

COSINE = 0.99999


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb and len(a) == len(b) else 0.0


def post(base, path, body, key):
    request = urllib.request.Request(
        base + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


def main():
    base, key, golden_path = sys.argv[1:4]
    cases = json.load(open(golden_path))["cases"]
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
    results = []

    def check(name, ok, detail=""):
        results.append(ok)
        print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")

    # One string.
    text, want = cases[0]["text"], cases[0]["embedding"]
    got = client.embeddings.create(model="all-MiniLM-L6-v2", input=text)
    check("a string", cosine(got.data[0].embedding, want) >= COSINE,
          f"cosine {cosine(got.data[0].embedding, want):.8f}")
    check("usage.prompt_tokens", got.usage.prompt_tokens == len(cases[0]["ids"]),
          f"{got.usage.prompt_tokens}")

    # A list of strings (the client asks for base64 by default and decodes it).
    chunk = cases[:16]
    got = client.embeddings.create(model="all-MiniLM-L6-v2", input=[c["text"] for c in chunk])
    worst = min(cosine(d.embedding, c["embedding"]) for d, c in zip(got.data, chunk))
    check("a list of strings", len(got.data) == len(chunk) and worst >= COSINE, f"worst cosine {worst:.8f}")
    check("indices in order", [d.index for d in got.data] == list(range(len(chunk))))

    # Token ids, as /tokenize gives them.
    tokens = post(base, "/tokenize", {"inputs": [c["text"] for c in chunk[:4]]}, key)
    ids = [[t["id"] for t in row] for row in tokens]
    check("/tokenize gives the fixture's ids", ids == [c["ids"] for c in chunk[:4]])
    got = client.embeddings.create(model="all-MiniLM-L6-v2", input=ids)
    worst = min(cosine(d.embedding, c["embedding"]) for d, c in zip(got.data, chunk[:4]))
    check("token ids", worst >= COSINE, f"worst cosine {worst:.8f}")
    got = client.embeddings.create(model="all-MiniLM-L6-v2", input=ids[0])
    check("one list of token ids", cosine(got.data[0].embedding, chunk[0]["embedding"]) >= COSINE)

    # Float format and dimensions.
    got = client.embeddings.create(model="m", input=text, encoding_format="float", dimensions=32)
    norm = math.sqrt(sum(x * x for x in got.data[0].embedding))
    check("dimensions=32 renormalised", len(got.data[0].embedding) == 32 and abs(norm - 1) < 1e-5)

    # Both APIs return the same vectors.
    tei = post(base, "/embed", {"inputs": [c["text"] for c in chunk]}, key)
    oai = client.embeddings.create(model="m", input=[c["text"] for c in chunk], encoding_format="float")
    worst = min(cosine(a, b.embedding) for a, b in zip(tei, oai.data))
    check("TEI /embed equals OpenAI /v1/embeddings", worst >= 0.999999, f"worst cosine {worst:.8f}")

    # Errors in OpenAI's shape reach the client as its own exceptions.
    try:
        openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="m", input="x")
        check("a wrong key is refused", False)
    except openai.AuthenticationError as error:
        check("a wrong key is refused", error.status_code == 401, str(error.body)[:80])
    try:
        client.embeddings.create(model="m", input="")
        check("an empty string is refused", False)
    except openai.BadRequestError as error:
        check("an empty string is refused", error.status_code == 400, str(error.body)[:80])

    failed = results.count(False)
    print(f"{len(results) - failed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
