"""A small MCP server for den's tests, written from the protocol alone (no
SDK): JSON-RPC 2.0 over newline-delimited stdio, or over streamable HTTP
(POST answered with application/json) when started with --http PORT.

It offers one tool, word_count(text), and refuses anything else.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

TOOLS = [{
    "name": "word_count",
    "description": "Count the words of a text",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
}]


def answer(request):
    """The response to one request, or None for a notification."""
    method, rid, params = request.get("method"), request.get("id"), request.get("params") or {}
    if rid is None:
        return None
    if method == "initialize":
        result = {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "den-test-words", "version": "1.0"},
        }
    elif method == "tools/list":
        result = {"tools": TOOLS}
    elif method == "tools/call" and params.get("name") == "word_count":
        text = (params.get("arguments") or {}).get("text", "")
        result = {"content": [{"type": "text", "text": f"{len(text.split())} words"}], "isError": False}
    elif method == "ping":
        result = {}
    else:
        return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"no method {method}"}}
    return {"jsonrpc": "2.0", "id": rid, "result": result}


def stdio():
    for line in sys.stdin:
        if line.strip():
            reply = answer(json.loads(line))
            if reply is not None:
                sys.stdout.write(json.dumps(reply) + "\n")
                sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        reply = answer(json.loads(body))
        if reply is None:
            self.send_response(202)
            self.end_headers()
            return
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.send_response(405)
        self.end_headers()

    def do_DELETE(self):
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server = HTTPServer(("127.0.0.1", int(sys.argv[2])), Handler)
        print("ready", flush=True)
        server.serve_forever()
    else:
        stdio()
