"""Buys benchmark credentials from a sandbox gateway: one L402 token, and
COUNT single-use MPP credentials (one sandbox payment each).

usage: credentials.py BASE_URL PATH COUNT L402_OUT MPP_OUT
"""
import base64
import http.client
import json
import re
import sys
import urllib.parse

base, path, count, l402_out, mpp_out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
url = urllib.parse.urlparse(base)
conn = http.client.HTTPConnection(url.hostname, url.port)
PARAM = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def offer():
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    assert response.status == 402, response.status
    challenges = {}
    for value in response.headers.get_all("WWW-Authenticate"):
        scheme = value.split(" ", 1)[0]
        challenges[scheme] = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in PARAM.findall(value)}
    return challenges


def pay(invoice):
    conn.request("POST", "/sandbox/pay", body=json.dumps({"invoice": invoice}), headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    body = json.loads(response.read())
    assert response.status == 200, body
    return body["preimage"]


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


l402 = offer()["L402"]
with open(l402_out, "w") as out:
    out.write(f'L402 {l402["macaroon"]}:{pay(l402["invoice"])}\n')

with open(mpp_out, "w") as out:
    for i in range(count):
        challenge = offer()["Payment"]
        request = json.loads(base64.urlsafe_b64decode(challenge["request"] + "=" * (-len(challenge["request"]) % 4)))
        preimage = pay(request["methodDetails"]["invoice"])
        echo = {k: challenge[k] for k in ("id", "realm", "method", "intent", "request", "expires", "digest", "opaque", "description") if k in challenge}
        credential = {"challenge": echo, "payload": {"preimage": preimage}}
        out.write("Payment " + b64url(json.dumps(credential, separators=(",", ":")).encode()) + "\n")
