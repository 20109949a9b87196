"""A loopback stand-in for the Hugging Face Hub: the routes huggingface_hub, timm and datasets use.

Test-only (never shipped). Standard library, in memory, bound to 127.0.0.1. Checked against
huggingface_hub 2.4 (with HF_HUB_DISABLE_XET=1, so uploads take the plain HTTP path).
Routes:
  GET  /api/whoami-v2                                   token check (401 for a bad token)
  POST /api/validate-yaml                               always valid
  POST /api/repos/create                                create (409 if it exists)
  GET  /api/{models,datasets,spaces}/<id>[/revision/<rev>]   repo info with siblings
  GET  /api/<type>s/<id>/tree/<rev>[/<path>]            file listing (recursive or not)
  POST /api/<type>s/<id>/paths-info/<rev>               info for given paths
  POST /api/<type>s/<id>/preupload/<rev>                every file is uploaded inline ("regular")
  POST /api/<type>s/<id>/commit/<rev>                   NDJSON commit (header, file, deletedFile)
  POST /api/spaces/<id>/{variables,secrets,hardware}    recorded for assertions (or failed: HubStandIn.failing)
  POST /<prefix><id>.git/info/lfs/objects/batch         LFS batch, with an upload URL (PUT /lfs-upload/<oid>)
  GET|HEAD /<prefix><id>/resolve/<rev>/<path>           ETag, X-Repo-Commit, byte ranges; 404 + X-Error-Code
"""
from __future__ import annotations

import base64
import collections
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


@dataclass
class Repo:
    type: str
    private: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    sdk: str | None = None
    hardware: str | None = None

    @property
    def sha(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40


class HubStandIn:
    def __init__(self, token: str = "hf_standin_token"):
        self.token = token
        self.token_role = "write"  # what whoami says of the token: "read" for a read-only one
        self.downloads: collections.Counter = collections.Counter()  # GETs of (repo id, file)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        # a Space setting ("variables", "secrets", "hardware") -> the status its route answers instead, to see
        # a failed step: a plain error, no X-Error-Code, as for a route a Hub does not have
        self.failing: dict[str, int] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> "HubStandIn":
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:  # idempotent: a test may stop the Hub early to see the fallback
            self.server.shutdown()
            self.server.server_close()
            self._thread = None

    def add_files(self, repo_type: str, repo_id: str, files: dict[str, bytes]) -> None:
        repo = self.repos.setdefault((repo_type, repo_id), Repo(repo_type))
        repo.files.update(files)
        repo.commits.append(hashlib.sha1(repr(sorted(repo.files)).encode() + repo.sha.encode()).hexdigest())

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            # -- plumbing
            def _send(self, status, body=b"", headers=None, head=False):
                if isinstance(body, (dict, list)):
                    body = json.dumps(body).encode()
                    headers = {"Content-Type": "application/json", **(headers or {})}
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not (head or self.command == "HEAD"):  # HEAD answers carry headers only
                    self.wfile.write(body)

            def _error(self, status, message, code=None):
                headers = {"X-Error-Message": message}
                if code:
                    headers["X-Error-Code"] = code
                self._send(status, {"error": message}, headers)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _authorized(self) -> bool:
                auth = self.headers.get("Authorization", "")
                return auth == f"Bearer {hub.token}"

            def _repo(self, repo_type, repo_id):
                repo = hub.repos.get((repo_type, repo_id))
                if repo is None or (repo.private and not self._authorized()):
                    self._error(404, f"Repository {repo_id} not found", "RepoNotFound")
                    return None
                return repo

            # -- routes
            def do_HEAD(self):
                self._resolve(head=True)

            def do_GET(self):
                path = urlparse(self.path).path
                if path == "/api/whoami-v2":
                    if not self._authorized():
                        return self._error(401, "Invalid credentials in Authorization header")
                    return self._send(200, {"type": "user", "name": "tester", "auth": {"accessToken": {
                        "displayName": "test", "role": hub.token_role}}, "orgs": []})
                m = re.fullmatch(r"/api/(model|dataset|space)s/(.+?)(?:/revision/([^/]+))?", path)
                if m and "/tree/" not in path:
                    return self._info(m.group(1), unquote(m.group(2)))
                m = re.fullmatch(r"/api/(model|dataset|space)s/(.+?)/tree/([^/]+)(?:/(.*))?", path)
                if m:
                    return self._tree(m.group(1), unquote(m.group(2)), unquote(m.group(4) or ""))
                self._resolve()

            def do_POST(self):
                path = urlparse(self.path).path
                if path == "/api/validate-yaml":
                    self._body()
                    return self._send(200, {"errors": [], "warnings": []})
                if path == "/api/repos/create":
                    return self._create()
                m = re.fullmatch(r"/api/(model|dataset|space)s/(.+?)/(preupload|commit|paths-info)/([^/]+)", path)
                if m:
                    kind, repo_id, action = m.group(1), unquote(m.group(2)), m.group(3)
                    return getattr(self, "_" + action.replace("-", "_"))(kind, repo_id)
                m = re.fullmatch(r"/api/spaces/(.+?)/(variables|secrets|hardware)", path)
                if m:
                    return self._space_setting(unquote(m.group(1)), m.group(2))
                m = re.fullmatch(r"/(datasets/|spaces/)?(.+?)\.git/info/lfs/objects/batch", path)
                if m:
                    return self._lfs_batch()
                self._error(404, f"no route {path}")

            def do_PUT(self):
                m = re.fullmatch(r"/lfs-upload/([0-9a-f]{64})", urlparse(self.path).path)
                if not m:
                    return self._error(404, "no route")
                hub.lfs_objects[m.group(1)] = self._body()
                self._send(200, {})

            def _create(self):
                if not self._authorized():
                    return self._error(401, "Invalid credentials in Authorization header")
                body = json.loads(self._body())
                repo_type = body.get("type") or "model"
                repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
                if "/" not in repo_id:
                    repo_id = f"tester/{repo_id}"
                url = f"{hub.url}/{PREFIX[repo_type]}{repo_id}"
                if (repo_type, repo_id) in hub.repos:
                    return self._send(409, {"error": "You already created this repo", "url": url})
                # huggingface_hub 1.x and later send "visibility"; older clients "private"
                private = body.get("visibility") == "private" or bool(body.get("private"))
                hub.repos[(repo_type, repo_id)] = Repo(repo_type, private=private, sdk=body.get("sdk"))
                self._send(200, {"url": url, "name": repo_id})

            def _info(self, repo_type, repo_id):
                repo = self._repo(repo_type, repo_id)
                if repo:
                    siblings = [{"rfilename": p, "size": len(b)} for p, b in sorted(repo.files.items())]
                    self._send(200, {"id": repo_id, "sha": repo.sha, "private": repo.private, "siblings": siblings,
                                     "tags": [], "downloads": 0, "likes": 0, "disabled": False, "gated": False,
                                     "lastModified": "2026-01-01T00:00:00.000Z", "sdk": repo.sdk})

            def _entry(self, path, data):
                return {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}

            def _tree(self, repo_type, repo_id, folder):
                repo = self._repo(repo_type, repo_id)
                if not repo:
                    return
                recursive = parse_qs(urlparse(self.path).query).get("recursive", ["false"])[0].lower() == "true"
                prefix = f"{folder.rstrip('/')}/" if folder else ""
                entries, dirs = [], set()
                for path, data in sorted(repo.files.items()):
                    if not path.startswith(prefix):
                        continue
                    rest = path[len(prefix):]
                    parts = rest.split("/")
                    for depth in range(1, len(parts)):
                        if recursive or depth == 1:
                            dirs.add(prefix + "/".join(parts[:depth]))
                    if recursive or len(parts) == 1:
                        entries.append(self._entry(path, data))
                if folder and not entries and not dirs:
                    return self._error(404, f"{folder} not found", "EntryNotFound")
                tree = [{"type": "directory", "path": d, "oid": "0" * 40, "size": 0} for d in sorted(dirs)]
                self._send(200, tree + entries)

            def _paths_info(self, repo_type, repo_id):
                repo = self._repo(repo_type, repo_id)
                if not repo:
                    return
                body = self._body().decode()
                paths = parse_qs(body).get("paths") if "=" in body and not body.startswith("{") else \
                    json.loads(body).get("paths", [])
                out = []
                for p in paths:
                    if p in repo.files:
                        out.append(self._entry(p, repo.files[p]))
                    elif any(f.startswith(p.rstrip("/") + "/") for f in repo.files):
                        out.append({"type": "directory", "path": p, "oid": "0" * 40, "size": 0})
                self._send(200, out)

            def _preupload(self, repo_type, repo_id):
                if not self._authorized():
                    return self._error(401, "Invalid credentials in Authorization header")
                files = json.loads(self._body())["files"]
                self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                           for f in files]})

            def _commit(self, repo_type, repo_id):
                if not self._authorized():
                    return self._error(401, "Invalid credentials in Authorization header")
                repo = self._repo(repo_type, repo_id)
                if not repo:
                    return
                for line in self._body().splitlines():
                    item = json.loads(line)
                    value = item.get("value", {})
                    if item["key"] == "file":
                        repo.files[value["path"]] = base64.b64decode(value["content"])
                    elif item["key"] == "lfsFile":
                        repo.files[value["path"]] = hub.lfs_objects[value["oid"]]
                    elif item["key"] == "deletedFile":
                        repo.files.pop(value["path"], None)
                repo.commits.append(hashlib.sha1(f"{repo_id}{len(repo.commits)}".encode()).hexdigest())
                self._send(200, {"commitUrl": f"{hub.url}/{PREFIX[repo_type]}{repo_id}/commit/{repo.sha}",
                                 "commitOid": repo.sha})

            def _space_setting(self, repo_id, kind):
                if not self._authorized():
                    return self._error(401, "Invalid credentials in Authorization header")
                repo = self._repo("space", repo_id)
                if not repo:
                    return
                body = json.loads(self._body() or b"{}")
                if kind in hub.failing:
                    return self._error(hub.failing[kind], f"the stand-in fails /api/spaces/<id>/{kind} on purpose")
                if kind == "hardware":
                    repo.hardware = body.get("flavor")
                else:
                    getattr(repo, kind)[body["key"]] = body.get("value", "")
                variables = {k: {"value": v, "updatedAt": "2026-01-01T00:00:00.000Z"} for k, v in repo.variables.items()}
                self._send(200, variables if kind == "variables" else {})

            def _lfs_batch(self):
                if not self._authorized():
                    return self._error(401, "Invalid credentials")
                body = json.loads(self._body())
                objects = [{"oid": o["oid"], "size": o["size"], "authenticated": True,
                            "actions": {"upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"}}}
                           for o in body["objects"] if o["oid"] not in hub.lfs_objects]
                self._send(200, {"transfer": "basic", "objects": objects})

            def _resolve(self, head=False):
                path = urlparse(self.path).path
                m = re.fullmatch(r"/(datasets/|spaces/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
                if not m:
                    return self._error(404, f"no route {path}")
                repo_type = {"datasets/": "dataset", "spaces/": "space"}.get(m.group(1) or "", "model")
                repo = self._repo(repo_type, unquote(m.group(2)))
                if not repo:
                    return
                file = unquote(m.group(4))
                if file not in repo.files:
                    return self._error(404, f"{file} does not exist", "EntryNotFound")
                data = repo.files[file]
                if not head:
                    hub.downloads[(unquote(m.group(2)), file)] += 1
                etag = f'"{hashlib.sha256(data).hexdigest()}"'
                headers = {"ETag": etag, "X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes",
                           "Content-Type": "application/octet-stream"}
                status = 200
                ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if ranged:
                    start = int(ranged.group(1))
                    end = int(ranged.group(2)) if ranged.group(2) else len(data) - 1
                    end = min(end, len(data) - 1)
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                    data, status = data[start:end + 1], 206
                self._send(status, data, headers, head=head)

        return Handler
