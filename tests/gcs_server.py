"""A local Google Cloud Storage (JSON API) server for tests: gcp-storage-emulator with the gaps real clients
hit filled in. Run as `python gcs_server.py PORT LIFETIME_SECONDS`; it stops itself after LIFETIME_SECONDS.

Filled in: the in-memory server no longer re-serialises its whole object table to JSON on every write (nothing
reads it back; each upload grew slower than the last), object listing honours startOffset/endOffset (tensorstore
lists and deletes key ranges with them; ignored, a range delete wipes the bucket), the listen backlog holds every
connection a client opens at once, downloads carry x-goog-generation (tensorstore needs it), objects have moveTo
(gcsfs renames with it), and uploads honour ifGenerationMatch (conditional writes).

Faults, for tests of retries: `GET /_faults?status=503&count=2&match=part-` makes the next 2 downloads of objects
whose names contain `part-` answer 503 (`inject_faults` below, from the test's process).
"""

import sys
import time
from http import HTTPStatus, server as http_server

from gcp_storage_emulator import server, storage as emulator_storage
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_original_ls, _original_download, _original_insert = objects.ls, objects.download, objects.insert


def _query(request, name):
  values = request.query.get(name)
  return values[0] if values else None


def ls(request, response, storage, *args, **kwargs):
  start, end = _query(request, "startOffset"), _query(request, "endOffset")
  original = storage.get_file_list

  def in_range(*a, **k):
    files, prefixes = original(*a, **k)
    return [f for f in files if (start is None or f["name"] >= start) and (end is None or f["name"] < end)], prefixes

  storage.get_file_list = in_range
  try:
    _original_ls(request, response, storage, *args, **kwargs)
  finally:
    storage.get_file_list = original


_FAULTS = {"status": 0, "count": 0, "match": ""}


def faults(request, response, storage, *args, **kwargs):
  if _query(request, "status"):
    _FAULTS.update(status=int(_query(request, "status")), count=int(_query(request, "count")),
                   match=_query(request, "match") or "")
  response.json({"pending": _FAULTS["count"]})


def inject_faults(url: str, status: int = 0, count: int = 0, match: str = "") -> int:
  """From a test: the server's next `count` downloads of objects named like `match` fail with `status`; without
  a status, only how many injected faults are still to come."""
  import json
  import urllib.parse
  import urllib.request
  query = urllib.parse.urlencode({"status": status, "count": count, "match": match} if status else {})
  return json.loads(urllib.request.urlopen(f"{url}/_faults?{query}").read())["pending"]


def download(request, response, storage, *args, **kwargs):
  if _FAULTS["count"] > 0 and _FAULTS["match"] in request.params.get("object_id", ""):
    _FAULTS["count"] -= 1
    response.status = HTTPStatus(_FAULTS["status"])
    response.json({"error": {"code": _FAULTS["status"], "message": "injected fault"}})
    return
  _original_download(request, response, storage, *args, **kwargs)
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
  except NotFound:
    pass


def _object_name(request):
  name = _query(request, "name")
  if name is None and "object_id" in request.params:
    name = request.params["object_id"]
  return name


def insert(request, response, storage, *args, **kwargs):
  expected = _query(request, "ifGenerationMatch")
  name = _object_name(request)
  if expected is not None and name is not None:
    try:
      current = storage.get_file_obj(request.params["bucket_name"], name)["generation"]
    except NotFound:
      current = "0"
    if str(current) != str(expected):
      response.status = HTTPStatus.PRECONDITION_FAILED
      return None
  return _original_insert(request, response, storage, *args, **kwargs)


def move(request, response, storage, *args, **kwargs):
  bucket, source, dest = (request.params[k] for k in ("bucket_name", "object_id", "dest_object_id"))
  try:
    obj, content = storage.get_file_obj(bucket, source), storage.get_file(bucket, source)
  except NotFound:
    response.status = HTTPStatus.NOT_FOUND
    return
  moved = objects._make_object_resource(request.base_url, bucket, dest, obj["contentType"], obj["size"], obj)
  storage.create_file(bucket, dest, content, objects._checksums(content, moved))
  storage.delete_file(bucket, source)
  response.json(moved)


def patch_handlers():
  replace = {_original_ls: ls, _original_download: download, _original_insert: insert}
  for _, handlers in server.HANDLERS:
    for method, fn in list(handlers.items()):
      handlers[method] = replace.get(fn, fn)
  move_route = (r"^(?:/storage/v1)?/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)/moveTo/o/"
                r"(?P<dest_object_id>.*[^/]+)$", {server.POST: move})
  server.HANDLERS = (move_route, (r"^/_faults$", {server.GET: faults})) + tuple(server.HANDLERS)


def main():
  port, lifetime = int(sys.argv[1]), float(sys.argv[2])
  patch_handlers()
  # The server answers one request at a time; tensorstore opens dozens of connections at once. With the standard
  # listen backlog of 5 the kernel drops the rest, and each dropped connection waits a second before retrying.
  http_server.HTTPServer.request_queue_size = 1024
  emulator_storage.Storage._write_config_to_file = lambda self: None
  gcs = server.create_server("127.0.0.1", port, in_memory=True)
  gcs.start()
  print("ready", flush=True)
  time.sleep(lifetime)
  gcs.stop()


if __name__ == "__main__":
  main()
