#!/usr/bin/env python3
"""A local control plane for trying `agent start` (listen mode) on one job.

It answers the requests docs/listen.md describes (register, sync, the job,
refresh, disconnect), hands out the one job read from a JSON job file,
takes the job's pushed event log and prints it on stdout, one event a line.
What it does goes to stderr. It exits when the agent disconnects: 0 when
the job passed, 1 when it did not.

    python3 examples/control_plane.py examples/hello.json &
    SEMAPHORE_AGENT_TOKEN=local-token agent start --endpoint 127.0.0.1:8080 --no-https

Plain HTTP on 127.0.0.1, no state on disk, one job: a way to watch listen
mode work, not a control plane to run jobs with. Python 3 standard library
only.
"""

import argparse
import json
import secrets
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

BASE = "/api/v1/self_hosted_agents"
LOGS = "/api/v1/logs/"
# How often the agent syncs, in milliseconds: often, for a local try.
SYNC_EVERY_MS = 1000


def say(text):
    print(f"control plane: {text}", file=sys.stderr, flush=True)


class Plane:
    """What the control plane knows, shared by the request threads."""

    def __init__(self, job, registration_token):
        self.lock = threading.Lock()
        self.job = job
        self.job_id = job["job_id"]
        self.registration_token = registration_token
        self.access_token = secrets.token_hex(16)
        self.push_token = secrets.token_hex(16)
        self.handed_out = False
        self.result = None
        self.lines = 0
        self.done = threading.Event()

    def sync(self, body):
        """The answer to one sync, as docs/listen.md, "States and actions"."""
        state = body.get("state", "")
        interrupted = bool(body.get("interrupted_at"))
        if state == "waiting-for-jobs":
            if interrupted:
                return {"action": "shutdown", "shutdown_reason": "interrupted"}
            if not self.handed_out:
                self.handed_out = True
                say(f"giving the agent job {self.job_id}")
                return {"action": "run-job", "job_id": self.job_id}
            if self.result is not None:
                # The one job is done and acknowledged: nothing more to do.
                return {"action": "shutdown", "shutdown_reason": "job-finished"}
            return {"action": "continue"}
        if state == "finished-job":
            if self.result is None:
                self.result = body.get("job_result", "")
                say(f"job {body.get('job_id')} finished: {self.result}")
            return {"action": "wait-for-jobs"}
        return {"action": "continue"}

    def push(self, start_from, text):
        """Takes pushed lines from `start_from` on; `False` for a gap."""
        lines = text.splitlines()
        if start_from > self.lines:
            return False
        # Lines sent again (an answer that was lost) are printed once.
        for line in lines[self.lines - start_from:]:
            print(line, flush=True)
        self.lines = max(self.lines, start_from + len(lines))
        return True


class Handler(BaseHTTPRequestHandler):
    plane = None  # set in main
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass  # the interesting part is said by `say`

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length)

    def do_GET(self):
        plane = self.plane
        path = urlsplit(self.path).path
        if self.headers.get("Authorization") != f"Token {plane.access_token}":
            return self.answer(401, {"message": "bad access token"})
        if path == f"{BASE}/jobs/{plane.job_id}":
            return self.answer(200, plane.job)
        self.answer(404, {"message": "no such job"})

    def do_POST(self):
        plane = self.plane
        url = urlsplit(self.path)
        auth = self.headers.get("Authorization", "")
        raw = self.body()
        if url.path.startswith(LOGS):
            if auth != f"Bearer {plane.push_token}":
                return self.answer(401, {"message": "bad log token"})
            start = parse_qs(url.query).get("start_from", ["0"])[0]
            with plane.lock:
                ok = plane.push(int(start), raw.decode("utf-8", "replace"))
            if not ok:
                return self.answer(422, {"message": "lines are missing before start_from"})
            return self.answer(200, {})
        if url.path == f"{BASE}/register":
            if auth != f"Token {plane.registration_token}":
                say("refused a registration: wrong registration token")
                return self.answer(401, {"message": "bad registration token"})
            agent = json.loads(raw or b"{}")
            say(f"agent {agent.get('name')} registered (pid {agent.get('pid')}, "
                f"{agent.get('hostname')})")
            return self.answer(200, {"name": agent.get("name"), "token": plane.access_token})
        if auth != f"Token {plane.access_token}":
            return self.answer(401, {"message": "bad access token"})
        if url.path == f"{BASE}/sync":
            with plane.lock:
                reply = plane.sync(json.loads(raw or b"{}"))
            reply["next_sync_after"] = SYNC_EVERY_MS
            return self.answer(200, reply)
        if url.path == f"{BASE}/refresh":
            return self.answer(200, {"token": plane.push_token})
        if url.path == f"{BASE}/disconnect":
            say("the agent disconnected")
            self.answer(200, {})
            plane.done.set()
            return None
        self.answer(404, {"message": "no such route"})


def main():
    parser = argparse.ArgumentParser(
        description="A local control plane for `agent start`: hands out one job, prints its log.")
    parser.add_argument("job_file", help="the job, as JSON (the API's job request)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--registration-token", default="local-token",
                        help="what the agent must register with (default: local-token)")
    args = parser.parse_args()

    with open(args.job_file, encoding="utf-8") as f:
        job = json.load(f)
    job["job_id"] = job.get("job_id") or job.get("id") or "job-1"

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    host, port = server.server_address[:2]
    # The agent pushes the log to the URL the job names.
    plane = Plane(job, args.registration_token)
    job["logger"] = {
        "method": "push",
        "url": f"http://{host}:{port}{LOGS}{job['job_id']}",
        "token": plane.push_token,
    }
    Handler.plane = plane
    threading.Thread(target=server.serve_forever, daemon=True).start()
    say(f"listening on http://{host}:{port}")
    say(f"try: SEMAPHORE_AGENT_TOKEN={args.registration_token} "
        f"agent start --endpoint {host}:{port} --no-https")
    try:
        plane.done.wait()
    except KeyboardInterrupt:
        say("interrupted")
        server.shutdown()
        return 130
    server.shutdown()
    return 0 if plane.result == "passed" else 1


if __name__ == "__main__":
    sys.exit(main())
