"""A minimal Hugging Face Hub-compatible HTTP server for tests (stdlib only, in-memory, one thread per request).

It speaks exactly the endpoints that ``huggingface_hub`` (2.x) uses for the push/pull round trip of this
project, with *regular* (non-LFS, non-xet) uploads — the server answers ``uploadMode: "regular"`` for every
file, so the client sends file contents base64-encoded inside the commit payload and never talks to LFS/xet
storage:

=======================================================  ====================================================
endpoint                                                 used by
=======================================================  ====================================================
``GET  /api/whoami-v2``                                  ``HfApi.whoami``
``POST /api/repos/create``                               ``create_repo`` (409 when it exists)
``POST /api/validate-yaml``                              README metadata check in ``upload_folder`` /
                                                         ``create_commit`` (parses the YAML and model-index)
``POST /api/models/{repo}/preupload/{rev}``              upload modes (always ``regular``) + remote oids
``POST /api/models/{repo}/commit/{rev}[?create_pr=1]``   ndjson commit (``file`` / ``deletedFile`` /
                                                         ``deletedFolder``); ``create_pr`` opens ``refs/pr/N``
``POST /api/models/{repo}/branch/{branch}``              ``create_branch`` (409 when it exists)
``POST /api/models/{repo}/discussions``                  ``create_pull_request`` (opens ``refs/pr/N``; used by
``GET  /api/models/{repo}/discussions/{n}``              ``upload_folder(create_pr=True)`` when hf_xet is
                                                         installed)
``GET  /api/models/{repo}[/revision/{rev}]``             ``repo_info`` / ``model_info`` (``sha``, ``siblings``)
``GET  /api/models/{repo}/tree/{rev}[/{path}]``          ``list_repo_tree`` (``snapshot_download``,
                                                         ``list_repo_files``)
``HEAD|GET /{repo}/resolve/{rev}/{path}``                ``hf_hub_download`` (``ETag`` = git blob sha,
                                                         ``X-Repo-Commit``, ``Content-Length``)
=======================================================  ====================================================

Auth: ``Authorization: Bearer <token>``. ``tokens`` maps each known token to ``(user, writable_namespaces)``;
writes need a token whose namespaces contain the repo's namespace (else 403), an unknown token gets 401 with the
Hub's ``Invalid credentials in Authorization header`` message, private repos are invisible (404 ``RepoNotFound``)
without read access.

Fault injection for "fails midway" tests: :meth:`HubServer.fail` makes the next matching request(s) answer
500 or drop the TCP connection without a response.

Example::

    with HubServer() as hub:                     # listens on 127.0.0.1:<free port>
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo("alice/enc")
        api.upload_folder(repo_id="alice/enc", folder_path=folder)
        hf_hub_download("alice/enc", "config.json", endpoint=hub.endpoint, cache_dir=tmp)
        assert hub.count("POST", "/commit/") == 1
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["Commit", "HubServer", "Repo", "git_blob_sha"]

_GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a regular file's ``oid`` / ``ETag``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    sha: str
    parent: str | None
    files: dict[str, bytes]
    message: str


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # "main", "refs/pr/1", ... -> commit sha
    pull_requests: dict[int, str] = field(default_factory=dict)  # number -> title (ref ``refs/pr/<number>``)

    def resolve(self, rev: str) -> Commit | None:
        if rev in self.refs:
            return self.commits[self.refs[rev]]
        if re.fullmatch(r"[0-9a-f]{40}", rev) and rev in self.commits:
            return self.commits[rev]
        return None

    def files(self, rev: str = "main") -> dict[str, bytes]:
        """The files at ``rev`` (for assertions in tests)."""
        commit = self.resolve(rev)
        if commit is None:
            raise KeyError(f"{self.repo_id} has no revision {rev!r}")
        return dict(commit.files)


class _Reply(Exception):
    """Raised inside a handler to answer with an error status."""

    def __init__(self, status: int, message: str, error_code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.error_code = status, message, error_code


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    mode: str  # "500" | "drop"
    times: int


class HubServer:
    """In-memory Hub on ``127.0.0.1``; use as a context manager or call :meth:`start` / :meth:`stop`.

    Args:
        tokens: token -> (user name, namespaces the token may write to). Default: one token ``hf_test_writer``
            for user ``alice`` who may write to ``alice`` and ``robust-org``.
    """

    def __init__(self, tokens: dict[str, tuple[str, set[str]]] | None = None) -> None:
        self.tokens = tokens if tokens is not None else {"hf_test_writer": ("alice", {"alice", "robust-org"})}
        self.repos: dict[str, Repo] = {}
        self.log: list[tuple[str, str]] = []  # (method, path?query) of every request received
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def token(self) -> str:
        """The first configured token (a writer in the default set-up)."""
        return next(iter(self.tokens))

    @property
    def endpoint(self) -> str:
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="test-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test helpers
    def fail(self, method: str, path_regex: str, *, mode: str = "500", times: int = 1) -> None:
        """Make the next ``times`` requests whose path matches ``path_regex`` fail: ``"500"`` answers an
        internal server error, ``"drop"`` closes the connection without sending any response."""
        if mode not in ("500", "drop"):
            raise ValueError("mode must be '500' or 'drop'")
        with self._lock:
            self._faults.append(_Fault(method.upper(), re.compile(path_regex), mode, times))

    def count(self, method: str | None = None, contains: str = "") -> int:
        """Number of requests received with this method (any if ``None``) whose path contains ``contains``."""
        with self._lock:
            return sum(1 for m, p in self.log if (method is None or m == method) and contains in p)

    def create(self, repo_id: str, *, private: bool = False) -> Repo:
        """Create a repo directly (as the Hub does: with an initial commit holding ``.gitattributes``)."""
        with self._lock:
            repo = Repo(repo_id, private)
            first = self._new_commit(repo, None, {".gitattributes": _GITATTRIBUTES}, "initial commit")
            repo.refs["main"] = first.sha
            self.repos[repo_id] = repo
            return repo

    # ------------------------------------------------------------------ internals
    def _take_fault(self, method: str, path: str) -> str | None:
        with self._lock:
            for fault in self._faults:
                if fault.method == method and fault.pattern.search(path) and fault.times > 0:
                    fault.times -= 1
                    return fault.mode
        return None

    @staticmethod
    def _new_commit(repo: Repo, parent: str | None, files: dict[str, bytes], message: str) -> Commit:
        seed = f"{repo.repo_id}\0{parent}\0{message}\0{time.time_ns()}\0{len(repo.commits)}".encode()
        for path in sorted(files):
            seed += path.encode() + b"\0" + git_blob_sha(files[path]).encode()
        commit = Commit(hashlib.sha1(seed).hexdigest(), parent, dict(files), message)
        repo.commits[commit.sha] = commit
        return commit


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer  # set on the per-server subclass
    protocol_version = "HTTP/1.1"
    server_version = "TestHub/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
        pass

    # ------------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _user(self) -> tuple[str, set[str]] | None:
        auth = self.headers.get("Authorization", "")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        if token not in self.hub.tokens:
            raise _Reply(401, "Invalid credentials in Authorization header")
        return self.hub.tokens[token]

    def _repo(self, repo_id: str, *, write: bool = False) -> Repo:
        user = self._user()
        repo = self.hub.repos.get(repo_id)
        namespace = repo_id.split("/")[0]
        can_read = repo is not None and (not repo.private or (user is not None and namespace in user[1]))
        if not can_read:
            raise _Reply(404, f"Repository {repo_id} not found", "RepoNotFound")
        if write:
            if user is None:
                raise _Reply(401, "You must be authenticated to write to this repository")
            if namespace not in user[1]:
                raise _Reply(403, f"You don't have the rights to write to {repo_id}")
        assert repo is not None
        return repo

    @staticmethod
    def _commit_of(repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise _Reply(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    # ------------------------------------------------------------------ dispatch
    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    _ROUTES: list[tuple[str, re.Pattern[str], str]] = [
        ("GET", re.compile(r"^/api/whoami-v2$"), "_whoami"),
        ("POST", re.compile(r"^/api/repos/create$"), "_create_repo"),
        ("POST", re.compile(r"^/api/validate-yaml$"), "_validate_yaml"),
        ("POST", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)$"), "_preupload"),
        ("POST", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)$"), "_commit"),
        ("POST", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<rev>[^/]+)$"), "_branch"),
        ("POST", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/discussions$"), "_create_discussion"),
        ("GET", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/discussions/(?P<num>\d+)$"), "_discussion"),
        ("GET", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$"), "_info"),
        ("GET", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$"), "_tree"),
        ("GET", re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "_resolve"),
        ("HEAD", re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "_resolve"),
    ]

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        raw_path, query = url.path, parse_qs(url.query)
        with self.hub._lock:
            self.hub.log.append((self.command, self.path))
        body = self._body() if self.command == "POST" else b""
        fault = self.hub._take_fault(self.command, raw_path)
        if fault == "drop":
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault == "500":
            self._json(500, {"error": "Internal Error - injected by the test"})
            return
        try:
            for method, pattern, name in self._ROUTES:
                match = pattern.match(raw_path) if method == self.command else None
                if match:
                    params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    getattr(self, name)(body=body, query=query, **params)
                    return
            raise _Reply(404, f"no such endpoint: {self.command} {raw_path}")
        except _Reply as reply:
            headers = {"X-Error-Message": reply.message}
            if reply.error_code:
                headers["X-Error-Code"] = reply.error_code
            self._json(reply.status, {"error": reply.message}, headers)

    # ------------------------------------------------------------------ endpoints
    def _whoami(self, **_: Any) -> None:
        user = self._user()
        if user is None:
            raise _Reply(401, "Invalid credentials in Authorization header")
        self._json(200, {"type": "user", "name": user[0], "orgs": [{"name": n} for n in sorted(user[1])],
                         "auth": {"type": "access_token", "accessToken": {"role": "write"}}})

    def _create_repo(self, *, body: bytes, **_: Any) -> None:
        user = self._user()
        if user is None:
            raise _Reply(401, "You must be authenticated to create a repository")
        payload = json.loads(body or b"{}")
        if payload.get("type", "model") != "model":
            raise _Reply(400, "this test Hub only hosts model repos")
        namespace = payload.get("organization") or user[0]
        repo_id = f"{namespace}/{payload['name']}"
        if namespace not in user[1]:
            raise _Reply(403, f"You don't have the rights to create a repository under {namespace}")
        url = f"{self.hub.endpoint}/{repo_id}"
        with self.hub._lock:
            if repo_id in self.hub.repos:  # the Hub's 409 carries the url: create_repo(exist_ok=True) reads it
                message = "You already created this model repo"
                self._json(409, {"error": message, "url": url}, {"X-Error-Message": message})
                return
            self.hub.create(repo_id, private=payload.get("visibility") == "private" or bool(payload.get("private")))
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self, *, body: bytes, **_: Any) -> None:
        import yaml
        from huggingface_hub.repocard_data import model_index_to_eval_results

        content = json.loads(body).get("content", "")
        match = re.match(r"^\s*---\r?\n([\s\S]*?)\r?\n---[ \t]*(\r?\n|$)", content)
        if not match:
            self._json(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
            return
        errors = []
        try:
            meta = yaml.safe_load(match.group(1)) or {}
            if not isinstance(meta, dict):
                raise ValueError("metadata must be a mapping")
            if "model-index" in meta:
                model_index_to_eval_results(meta["model-index"])
        except Exception as exc:  # YAML syntax or model-index structure
            errors.append({"message": f"{exc.__class__.__name__}: {exc}"})
        self._json(400 if errors else 200, {"errors": errors, "warnings": []})

    def _preupload(self, *, repo: str, rev: str, body: bytes, **_: Any) -> None:
        r = self._repo(repo, write=True)
        files = self._commit_of(r, rev).files
        out = []
        for item in json.loads(body)["files"]:
            path = item["path"]
            oid = git_blob_sha(files[path]) if path in files else None
            out.append({"path": path, "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": out, "commitOid": self._commit_of(r, rev).sha})

    def _commit(self, *, repo: str, rev: str, body: bytes, query: dict[str, list[str]], **_: Any) -> None:
        r = self._repo(repo, write=True)
        create_pr = query.get("create_pr", ["0"])[0] in ("1", "true")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item["key"] == "header"), {})
        with self.hub._lock:
            base = self._commit_of(r, rev)
            if header.get("parentCommit") and not base.sha.startswith(header["parentCommit"]):
                raise _Reply(412, "A commit has happened since. Please refresh and try again.")
            files = dict(base.files)
            for item in lines:
                key, value = item["key"], item["value"]
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise _Reply(400, f"unsupported file encoding {value.get('encoding')!r}")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise _Reply(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for path in [p for p in files if p.startswith(prefix)]:
                        del files[path]
                elif key == "lfsFile":
                    raise _Reply(400, "this test Hub only accepts regular (non-LFS) files")
                elif key != "header":
                    raise _Reply(400, f"unknown commit operation {key!r}")
            commit = self.hub._new_commit(r, base.sha, files, header.get("summary", ""))
            pr_url = None
            if create_pr:
                num = self._open_pr(r, header.get("summary", ""), base.sha)
                r.refs[f"refs/pr/{num}"] = commit.sha
                pr_url = f"{self.hub.endpoint}/{repo}/discussions/{num}"
            else:
                if rev not in r.refs:
                    raise _Reply(400, f"cannot commit to {rev!r}: not a branch", "RevisionNotFound")
                r.refs[rev] = commit.sha
        self._json(200, {"success": True, "commitOid": commit.sha,
                         "commitUrl": f"{self.hub.endpoint}/{repo}/commit/{commit.sha}", "pullRequestUrl": pr_url})

    @staticmethod
    def _open_pr(repo: Repo, title: str, base_sha: str) -> int:
        num = len(repo.pull_requests) + 1
        repo.pull_requests[num] = title
        repo.refs[f"refs/pr/{num}"] = base_sha
        return num

    def _create_discussion(self, *, repo: str, body: bytes, **_: Any) -> None:
        r = self._repo(repo, write=True)
        payload = json.loads(body or b"{}")
        if not payload.get("pullRequest"):
            raise _Reply(400, "this test Hub only supports pull requests, not plain discussions")
        with self.hub._lock:
            num = self._open_pr(r, payload.get("title", ""), self._commit_of(r, "main").sha)
        self._json(200, {"num": num, "url": f"{self.hub.endpoint}/{repo}/discussions/{num}"})

    def _discussion(self, *, repo: str, num: str, **_: Any) -> None:
        r = self._repo(repo)
        if int(num) not in r.pull_requests:
            raise _Reply(404, f"Discussion {num} not found")
        self._json(200, {"num": int(num), "title": r.pull_requests[int(num)], "status": "draft",
                         "author": {"name": "alice"}, "createdAt": "2026-01-01T00:00:00.000Z",
                         "repo": {"name": repo, "type": "model"}, "isPullRequest": True, "events": [],
                         "changes": {"base": "refs/heads/main"}, "filesWithConflicts": []})

    def _branch(self, *, repo: str, rev: str, body: bytes, **_: Any) -> None:
        r = self._repo(repo, write=True)
        payload = json.loads(body or b"{}")
        with self.hub._lock:
            if rev in r.refs:
                raise _Reply(409, f"Reference already exists: {rev}")
            start = self._commit_of(r, payload.get("startingPoint") or "main")
            r.refs[rev] = start.sha
        self._json(200, {})

    def _info(self, *, repo: str, rev: str = "main", **_: Any) -> None:
        r = self._repo(repo)
        commit = self._commit_of(r, rev)
        siblings = [{"rfilename": p, "size": len(d), "blobId": git_blob_sha(d)} for p, d in sorted(commit.files.items())]
        self._json(200, {"id": repo, "modelId": repo, "sha": commit.sha, "private": r.private, "siblings": siblings,
                         "tags": [], "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z"})

    def _tree(self, *, repo: str, rev: str, query: dict[str, list[str]], path: str = "", **_: Any) -> None:
        r = self._repo(repo)
        commit = self._commit_of(r, rev)
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for file_path, data in sorted(commit.files.items()):
            if not file_path.startswith(prefix):
                continue
            rest = file_path[len(prefix):].split("/")
            for depth in range(1, len(rest)):  # folders on the way
                if depth > 1 and not recursive:
                    break
                folder = prefix + "/".join(rest[:depth])
                entries.setdefault(folder, {"type": "directory", "path": folder,
                                            "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0})
            if len(rest) == 1 or recursive:
                entries[file_path] = {"type": "file", "path": file_path, "size": len(data), "oid": git_blob_sha(data)}
        if prefix and not entries:
            raise _Reply(404, f"{path} does not exist on {rev}", "EntryNotFound")
        self._json(200, list(entries.values()))

    def _resolve(self, *, repo: str, rev: str, path: str, **_: Any) -> None:
        r = self._repo(repo)
        commit = self._commit_of(r, rev)
        if path not in commit.files:
            raise _Reply(404, f"Entry not found: {path}", "EntryNotFound")
        data = commit.files[path]
        etag = git_blob_sha(data)
        headers = {"ETag": f'"{etag}"', "X-Repo-Commit": commit.sha,
                   "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}"}
        self._send(200, data, headers, content_type="application/octet-stream")
