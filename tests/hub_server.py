"""A Hugging Face Hub look-alike HTTP server on 127.0.0.1, for tests of imagetok.hub.

The real ``huggingface_hub`` client talks to it: create repos and branches, commit files (every
file is answered ``uploadMode: "regular"`` so uploads are inline base64 and never go through Xet),
open pull requests, list files and refs, and download with ``HEAD``/``GET .../resolve/...`` (ETag,
X-Repo-Commit, Range). Errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound,
EntryNotFound) so the client raises its usual exceptions. Repos live in memory.

Fixtures (import them into a test module: ``from hub_server import hub_server, hf_hub``):

- ``hub_server`` (module scope): a running :class:`FakeHub`.
- ``hf_hub``: points huggingface_hub at that server with a fresh cache (``HF_HOME`` under
  ``tmp_path``), online, with a dummy token; returns the :class:`FakeHub`.

Importing this module also points huggingface_hub's environment at an isolated temp HF_HOME,
offline, with a dead endpoint, so nothing in the test session can reach huggingface.co or touch
the user's cache (the variables are read when huggingface_hub is first imported).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest


def isolate_hf_env() -> None:
    """Before huggingface_hub is imported: no network, a throwaway cache, no user token."""
    home = tempfile.mkdtemp(prefix="imagetok-test-hf-home-")
    os.environ["HF_HOME"] = home
    os.environ["HF_HUB_CACHE"] = os.path.join(home, "hub")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"  # discard port: refused at once
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.pop("HF_TOKEN", None)
    os.environ.pop("HUGGING_FACE_HUB_TOKEN", None)


isolate_hf_env()

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.ckpt filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub uses as ETag for non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    refs: dict[str, str] = field(default_factory=dict)  # branch or refs/pr/N -> commit
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit -> {path: bytes}
    messages: dict[str, str] = field(default_factory=dict)
    prs: int = 0

    def resolve(self, revision: str) -> str | None:
        if revision in self.refs:
            return self.refs[revision]
        if revision in self.commits:
            return revision
        return None


class FakeHub:
    """In-memory Hub. ``requests`` records ``(method, path, headers)`` of every request (header names lower-case)."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.lock = threading.RLock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None

    # --------------------------------------------------------------------------- lifecycle
    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self.endpoint

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "server not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # ------------------------------------------------------------------------ test helpers
    def new_commit_id(self) -> str:
        with self.lock:
            self._counter += 1
            return hashlib.sha1(f"commit-{self._counter}-{time.time_ns()}".encode()).hexdigest()

    def create_repo(self, repo_id: str, private: bool = False) -> Repo:
        with self.lock:
            if repo_id not in self.repos:
                repo = Repo(repo_id, private)
                sha = self.new_commit_id()
                repo.commits[sha] = {".gitattributes": GITATTRIBUTES}
                repo.messages[sha] = "initial commit"
                repo.refs["main"] = sha
                self.repos[repo_id] = repo
            return self.repos[repo_id]

    def commit(self, repo_id: str, files: dict[str, bytes | None], branch: str = "main", message: str = "test commit") -> str:
        """Commit ``files`` (None deletes a path) on ``branch`` (created from main if missing)."""
        with self.lock:
            repo = self.create_repo(repo_id)
            base = repo.refs.get(branch, repo.refs["main"])
            tree = dict(repo.commits[base])
            for path, data in files.items():
                if data is None:
                    tree.pop(path, None)
                else:
                    tree[path] = data
            sha = self.new_commit_id()
            repo.commits[sha], repo.messages[sha], repo.refs[branch] = tree, message, sha
            return sha

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return dict(repo.commits[repo.resolve(revision)])

    def count(self, method: str, fragment: str) -> int:
        """How many requests of ``method`` had ``fragment`` in their path."""
        return sum(1 for m, p, _ in self.requests if m == method and fragment in p)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    # ------------------------------------------------------------------------------ helpers
    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/json")
        headers.setdefault("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if body and not head:
            self.wfile.write(body)

    def _json(self, status: int, obj, headers: dict[str, str] | None = None, head: bool = False) -> None:
        self._send(status, json.dumps(obj).encode(), headers, head)

    def _error(self, status: int, code: str | None, message: str, extra: dict[str, str] | None = None, head: bool = False) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers, head)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _authorized(self) -> bool:
        return (self.headers.get("Authorization") or "").startswith("Bearer ")

    def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized()):
            self._error(401 if repo is not None else 404, "RepoNotFound", "Repository not found", head=head)
            return None
        return repo

    def _record(self) -> tuple[list[str], dict[str, list[str]]]:
        parts = urlsplit(self.path)
        self.fake.requests.append((self.command, parts.path, {k.lower(): v for k, v in self.headers.items()}))
        return parts.path.strip("/").split("/"), parse_qs(parts.query)

    # ------------------------------------------------------------------------------ routing
    def do_HEAD(self) -> None:
        self._get(head=True)

    def do_GET(self) -> None:
        self._get(head=False)

    def _get(self, head: bool) -> None:
        seg, query = self._record()
        with self.fake.lock:
            if len(seg) >= 5 and seg[2] == "resolve":
                return self._resolve(f"{seg[0]}/{seg[1]}", unquote(seg[3]), unquote("/".join(seg[4:])), head)
            if len(seg) >= 6 and seg[0] == "datasets" and seg[3] == "resolve":  # dataset repos live as "datasets/org/name"
                return self._resolve("/".join(seg[:3]), unquote(seg[4]), unquote("/".join(seg[5:])), head)
            if seg[:2] in (["api", "models"], ["api", "datasets"]) and len(seg) >= 4:
                repo_id, rest = ("datasets/" if seg[1] == "datasets" else "") + f"{seg[2]}/{seg[3]}", seg[4:]
                if not rest:
                    return self._model_info(repo_id, "main")
                if rest[0] == "revision" and len(rest) == 2:
                    return self._model_info(repo_id, unquote(rest[1]))
                if rest[0] == "tree" and len(rest) >= 2:
                    return self._tree(repo_id, unquote(rest[1]), unquote("/".join(rest[2:])), query)
                if rest == ["refs"]:
                    return self._refs(repo_id)
        self._error(404, None, f"no route for GET {self.path}")

    def do_PUT(self) -> None:
        self._record()
        self._error(404, None, "LFS uploads are not supported: every file is committed as 'regular'")

    def do_POST(self) -> None:
        seg, query = self._record()
        body = self._body()
        with self.fake.lock:
            if seg == ["api", "repos", "create"]:
                return self._create_repo(json.loads(body or b"{}"))
            if seg == ["api", "validate-yaml"]:
                return self._json(200, {"errors": [], "warnings": []})
            if seg[:2] in (["api", "models"], ["api", "datasets"]) and len(seg) >= 6:
                repo_id = ("datasets/" if seg[1] == "datasets" else "") + f"{seg[2]}/{seg[3]}"
                action, rev = seg[4], unquote("/".join(seg[5:]))
                if action == "preupload":
                    return self._preupload(repo_id, rev, json.loads(body or b"{}"))
                if action == "commit":
                    return self._commit(repo_id, rev, body, create_pr=query.get("create_pr") == ["1"])
                if action == "branch":
                    return self._create_branch(repo_id, rev, json.loads(body or b"{}"))
                if action == "paths-info":
                    return self._paths_info(repo_id, rev, parse_qs(body.decode()))
        self._error(404, None, f"no route for POST {self.path}")

    # ---------------------------------------------------------------------------- handlers
    def _create_repo(self, payload: dict) -> None:
        if not self._authorized():
            return self._error(401, None, "Invalid credentials in Authorization header")
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        url = f"{self.fake.endpoint}/{repo_id}"
        if repo_id in self.fake.repos:  # create_repo(exist_ok=True) reads "url" from the 409 body
            return self._json(409, {"error": "You already created this model repo", "url": url})
        self.fake.create_repo(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        self._json(200, {"url": url, "name": repo_id})

    def _resolved(self, repo_id: str, revision: str, head: bool = False):
        """(repo, commit sha) of a revision, or (.., None) after sending the 404 that says why."""
        repo = self._repo(repo_id, head=head)
        if repo is None:
            return None, None
        sha = repo.resolve(revision)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
        return repo, sha

    def _model_info(self, repo_id: str, revision: str) -> None:
        repo, sha = self._resolved(repo_id, revision)
        if sha is None:
            return
        files = repo.commits[sha]
        self._json(200, {
            "_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": p} for p in sorted(files)],
        })

    def _tree(self, repo_id: str, revision: str, prefix: str, query: dict) -> None:
        repo, sha = self._resolved(repo_id, revision)
        if sha is None:
            return
        recursive = query.get("recursive", ["false"])[0].lower() == "true"
        base = prefix.rstrip("/") + "/" if prefix else ""
        entries, dirs = [], set()
        for path, data in sorted(repo.commits[sha].items()):
            if not path.startswith(base):
                continue
            rest = path[len(base):]
            if "/" in rest:
                parts = rest.split("/")
                for i in range(1, len(parts) if recursive else 2):
                    dirs.add(base + "/".join(parts[:i]))
                if not recursive:
                    continue
            entries.append({"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": path})
        entries += [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)]
        self._json(200, entries)

    def _refs(self, repo_id: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in repo.refs.items() if not b.startswith("refs/")]
        prs = [{"name": b, "ref": b, "targetCommit": c} for b, c in repo.refs.items() if b.startswith("refs/pr/")]
        self._json(200, {"branches": branches, "tags": [], "converts": [], "pullRequests": prs})

    def _paths_info(self, repo_id: str, revision: str, form: dict) -> None:
        repo, sha = self._resolved(repo_id, revision)
        if sha is None:
            return
        files = repo.commits[sha]
        out = [{"type": "file", "oid": git_blob_sha1(files[p]), "size": len(files[p]), "path": p} for p in form.get("paths", []) if p in files]
        self._json(200, out)

    def _preupload(self, repo_id: str, revision: str, payload: dict) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        sha = repo.resolve(revision)
        current = repo.commits[sha] if sha else {}
        files = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
             "oid": git_blob_sha1(current[f["path"]]) if f["path"] in current else None}
            for f in payload.get("files", [])
        ]
        self._json(200, {"files": files, "commitOid": sha})

    def _create_branch(self, repo_id: str, branch: str, payload: dict) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if branch in repo.refs:
            return self._error(409, None, f"Reference already exists: refs/heads/{branch}")
        start = repo.resolve(payload.get("startingPoint") or "main")
        if start is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {payload.get('startingPoint')}")
        repo.refs[branch] = start
        self._json(200, {})

    def _commit(self, repo_id: str, revision: str, body: bytes, create_pr: bool) -> None:
        if not self._authorized():
            return self._error(401, None, "Invalid credentials in Authorization header")
        repo = self._repo(repo_id)
        if repo is None:
            return
        if create_pr:
            repo.prs += 1
            ref = f"refs/pr/{repo.prs}"
            base = repo.resolve(revision)
        else:
            ref, base = revision, repo.refs.get(revision)
        if base is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        tree = dict(repo.commits[base])
        summary = ""
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
                parent = value.get("parentCommit")
                if parent and parent != base:
                    return self._error(412, None, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                tree[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                tree.pop(value["path"], None)
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                tree = {p: d for p, d in tree.items() if not p.startswith(prefix)}
            else:
                return self._error(400, None, f"unsupported commit operation {key!r} (LFS is not implemented)")
        sha = self.fake.new_commit_id()
        repo.commits[sha], repo.messages[sha], repo.refs[ref] = tree, summary, sha
        pr_url = f"{self.fake.endpoint}/{repo_id}/discussions/{repo.prs}" if create_pr else None
        self._json(200, {"commitUrl": f"{self.fake.endpoint}/{repo_id}/commit/{sha}", "commitOid": sha, "pullRequestUrl": pr_url, "success": True})

    def _resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
        repo, sha = self._resolved(repo_id, revision, head=head)
        if sha is None:
            return
        files = repo.commits[sha]
        if path not in files:  # X-Repo-Commit lets the client cache the miss
            return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}", {"X-Repo-Commit": sha}, head=head)
        data = files[path]
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{git_blob_sha1(data)}"',
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
        }
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and not head:
            start_s, _, end_s = rng[len("bytes="):].partition("-")
            start = int(start_s or 0)
            end = int(end_s) if end_s else len(data) - 1
            part = data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{start + len(part) - 1}/{len(data)}"
            return self._send(206, part, headers)
        headers["Content-Length"] = str(len(data))
        self._send(200, data, headers, head=head)


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def hub_server():
    """A running :class:`FakeHub` shared by the tests of one module."""
    hub = FakeHub()
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture
def hf_hub(hub_server, tmp_path, monkeypatch):
    """huggingface_hub pointed at ``hub_server``, online, with a fresh cache and a dummy token."""
    from huggingface_hub import constants

    home = tmp_path / "hf-home"
    monkeypatch.setattr(constants, "ENDPOINT", hub_server.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub_server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setenv("HF_TOKEN", "hf_imagetok_test_token")
    return hub_server
