"""Sends COUNT requests one after another on one kept-alive connection and
checks each answer's status: what `scripts/instructions` counts.

usage: sequential.py PORT PATH COUNT STATUS [AUTHORIZATION_FILE [SKIP]]

With AUTHORIZATION_FILE, request i sends `Authorization:` line SKIP + i of
the file (the last line again once they run out: a single L402 token is a
file of one line).
"""
import http.client
import sys

port, path, count, status = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
lines = []
if len(sys.argv) > 5:
    with open(sys.argv[5]) as f:
        lines = [line.strip() for line in f if line.strip()]
skip = int(sys.argv[6]) if len(sys.argv) > 6 else 0
conn = http.client.HTTPConnection("127.0.0.1", port)
for i in range(count):
    headers = {}
    if lines:
        headers["Authorization"] = lines[min(skip + i, len(lines) - 1)]
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    response.read()
    if response.status != status:
        sys.exit(f"request {skip + i} to {path}: {response.status}, expected {status}")
