"""A fake Google Cloud Storage for tests of gs:// run directories (tests/test_object_storage.py,
test_ra3_job.py): gcp-storage-emulator, in memory on localhost, with the clients a run uses
pointed at it - gcsfs (epath's gs:// backend) through STORAGE_EMULATOR_HOST and TensorStore
(orbax's array writer) through TENSORSTORE_GCS_HTTP_URL. Use the session-scoped fixture `gcs`
(the bucket's URI); it skips when the test extra's gcsfs or emulator is missing."""

from __future__ import annotations

import os
import socket

import pytest

# gcsfs reads this when imported: its hierarchical-namespace probe needs real credentials, so it
# is off here, as for any bucket without that feature
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

BUCKET = "agentic-test"


def _serve_generation_headers(emulator) -> None:
  """Object downloads answer with x-goog-generation / x-goog-metageneration headers, as GCS's do
  (TensorStore reads an object's generation from them; the emulator leaves them out, and
  TensorStore then rejects the read as 'Malformed StorageGeneration')."""
  from gcp_storage_emulator.handlers import objects  # pylint: disable=import-outside-toplevel
  original = getattr(objects.download, "without_generation", objects.download)

  def download(request, response, storage, *args, **kwargs):
    original(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # pylint: disable=broad-except  (not found: the 404 is already set)
      return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))

  download.without_generation = original
  objects.download = download  # objects.get's alt=media path calls it by this name
  for _, table in emulator.HANDLERS:  # the routes hold the function itself
    for method, fn in list(table.items()):
      if fn is original:
        table[method] = download


@pytest.fixture(scope="session")
def gcs():
  """The fake GCS server's bucket URI, with the clients pointed at it for the rest of the session
  (one server: TensorStore may read its endpoint once per process). Tests use distinct
  prefixes in the bucket."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  emulator = pytest.importorskip("gcp_storage_emulator.server",
                                 reason="gcp-storage-emulator (test extra) is not installed")
  pytest.importorskip("gcsfs", reason="the gcs extra (gcsfs) is not installed")
  _serve_generation_headers(emulator)
  server = emulator.create_server("localhost", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  url = f"http://localhost:{port}"
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "GOOGLE_CLOUD_PROJECT": "test"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  import fsspec  # pylint: disable=import-outside-toplevel
  fsspec.filesystem("gs").clear_instance_cache()  # a gcsfs made before would miss the emulator
  try:
    yield f"gs://{BUCKET}"
  finally:
    server.stop()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
