"""A local HTTP server speaking the subset of the Hugging Face Hub API that `huggingface_hub` uses for
create-repo, preupload/commit upload and file resolution. Test code only.

Files are stored in memory per repo (`LocalHub.repos[repo_id]`); every request is logged in
`LocalHub.requests`, so a test can prove that a round trip really went through this server.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

USER = "tester"


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40


class _Handler(BaseHTTPRequestHandler):
    hub: LocalHub  # set on the subclass made per server

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    # -- helpers -------------------------------------------------------------------------------------
    def _send(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False
    ):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, payload, status: int = 200):
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

    def _not_found(self, code: str, head: bool = False):
        self._send(404, json.dumps({"error": code}).encode(), {"X-Error-Code": code}, head=head)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _record(self) -> str:
        path = unquote(urlparse(self.path).path)
        self.hub.requests.append((self.command, path))
        return path

    @staticmethod
    def _split_repo(rest: str) -> tuple[str, str]:
        """'user/name/...' -> ('user/name', '...')."""
        parts = rest.split("/")
        return "/".join(parts[:2]), "/".join(parts[2:])

    # -- routes --------------------------------------------------------------------------------------
    def do_GET(self):
        self._dispatch(head=False)

    def do_HEAD(self):
        self._dispatch(head=True)

    def _dispatch(self, head: bool):
        path = self._record()
        if path == "/api/whoami-v2":
            return self._json(
                {
                    "type": "user",
                    "name": USER,
                    "fullname": USER,
                    "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"role": "write"}},
                }
            )
        if path.startswith("/api/models/"):
            repo_id, rest = self._split_repo(path[len("/api/models/") :])
            repo = self.hub.repos.get(repo_id)
            if repo is None:
                return self._not_found("RepoNotFound")
            if rest.startswith("tree/"):
                return self._json(
                    [
                        {"type": "file", "path": p, "size": len(b), "oid": _oid(b)}
                        for p, b in sorted(repo.files.items())
                    ]
                )
            return self._json(
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": repo.sha,
                    "private": False,
                    "siblings": [{"rfilename": p} for p in sorted(repo.files)],
                }
            )
        if "/resolve/" in path:
            repo_part, file_part = path.lstrip("/").split("/resolve/", 1)
            repo = self.hub.repos.get(repo_part)
            if repo is None:
                return self._not_found("RepoNotFound", head)
            _revision, _, filename = file_part.partition("/")
            if filename not in repo.files:
                return self._not_found("EntryNotFound", head)
            data = repo.files[filename]
            headers = {
                "X-Repo-Commit": repo.sha,
                "ETag": f'"{_oid(data)}"',
                "Content-Type": "application/octet-stream",
            }
            return self._send(200, data, headers, head=head)
        return self._not_found("NotFound", head)

    def do_POST(self):
        path = self._record()
        body = self._body()
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
            if repo_id in self.hub.repos and not payload.get("exist_ok", True):
                return self._json({"error": "exists"}, 409)
            self.hub.repos.setdefault(repo_id, Repo())
            return self._json({"url": f"{self.hub.url}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":
            return self._json({})
        if path.startswith("/api/models/"):
            repo_id, rest = self._split_repo(path[len("/api/models/") :])
            repo = self.hub.repos.get(repo_id)
            if repo is None:
                return self._not_found("RepoNotFound")
            if rest.startswith("preupload/"):
                files = json.loads(body)["files"]
                return self._json(
                    {
                        "files": [
                            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
                        ]
                    }
                )
            if rest.startswith("commit/"):
                for line in body.decode().splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        repo.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    elif item["key"] == "deletedFile":
                        repo.files.pop(item["value"]["path"], None)
                sha = hashlib.sha1(f"{repo_id}{len(repo.commits)}".encode()).hexdigest()
                repo.commits.append(sha)
                return self._json(
                    {
                        "commitUrl": f"{self.hub.url}/{repo_id}/commit/{sha}",
                        "commitOid": sha,
                        "pullRequestUrl": None,
                    }
                )
        return self._not_found("NotFound")


def _oid(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


class LocalHub:
    """`with LocalHub() as hub:` serves on 127.0.0.1 (free port) in a thread; `hub.url` is the endpoint."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> LocalHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
