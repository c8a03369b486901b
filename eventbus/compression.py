"""The compression policy, as an event bus consumer: after an instance was
stored (and acknowledged as received), its object is converted to the
lossless syntax its tenant or calling AE title's rule names, and replaces the
original only once it decodes to identical pixel data.

Per instance: read the stored object where storage grants it; convert it
(dicomcore.codecs, which decodes the result and compares every frame with
the original's); write the new object through storage's grants (committed,
fsynced); then ReplaceObject switches the index row to it in one
transaction, and only if the row still points at the object converted; then
the old object is deleted. A crash at any step leaves the row pointing at
the old or the new object, and the other one unreferenced, which storage's
sweep removes. A redelivered event finds the row converted (or changed) and
does nothing: handling is idempotent.

Byte-exact retrieval of the received object (transfer-syntax=*) is not kept
for converted instances; their location says what they were received as
(InstanceLocation.conversion)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from common import errors
from common.blobs import BlobReader, Blobs
from common.clients import MetadataClient, StorageClient
from common.gen.dicomserver.v1 import events_pb2
from common.ingest import Rejected, read_record
from dicomcore import codecs
from eventbus.handlers import Handler
from eventbus.settings import CompressionRule

log = logging.getLogger(__name__)

TARGETS = {
    "jpeg-ls": "1.2.840.10008.1.2.4.80",
    "jpeg2000": "1.2.840.10008.1.2.4.90",
    "htj2k": "1.2.840.10008.1.2.4.201",
}
# Only objects stored natively are converted: a compressed one stays as it is.
CONVERTIBLE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def target_for(rules: Sequence[CompressionRule], tenant: str, calling_ae_title: str) -> str | None:
    """The transfer syntax the first matching rule names; None to keep."""
    for rule in rules:
        if rule.tenant in ("*", tenant) and rule.calling_ae_title in ("*", calling_ae_title):
            return TARGETS.get(rule.compress)
    return None


def check_rules(rules: Sequence[CompressionRule]) -> None:
    """Refuses, at start, a policy naming a syntax no installed encoder makes."""
    for rule in rules:
        target = TARGETS.get(rule.compress)
        if target is not None and not codecs.can_encode(target):
            raise SystemExit(f"compression policy: no encoder for {rule.compress} is installed")


class Compressor:
    def __init__(
        self,
        rules: Sequence[CompressionRule],
        storage: StorageClient,
        metadata: MetadataClient,
        reader: BlobReader | None = None,
        blobs: Blobs | None = None,
    ) -> None:
        self.rules = list(rules)
        self.storage = storage
        self.metadata = metadata
        self.reader = reader or BlobReader(storage)
        self.blobs = blobs or Blobs(storage)
        self.saved_bytes = 0
        self.converted = 0

    def __call__(self, event: events_pb2.Event) -> None:
        if event.WhichOneof("kind") != "instance_stored":
            return
        stored = event.instance_stored
        loc = stored.location
        target = target_for(self.rules, event.tenant, stored.source.calling_ae_title)
        if target is None or loc.transfer_syntax_uid not in CONVERTIBLE or loc.number_of_frames == 0:
            return
        current = self.metadata.locate_each(event.tenant, [loc.ref.sop_instance_uid])
        if not current or current[0].object_key != loc.object_key:
            return  # deleted, replaced or converted since: a later event (or none) covers it
        self.convert(loc.object_key, event.tenant, target, stored.source.calling_ae_title)

    def convert(self, key: str, tenant: str, target: str, calling_ae_title: str = "") -> bool:
        """Converts one stored object and points the index at the result; False when it stays."""
        try:
            data = self.reader.read(key)
        except errors.NotFound:
            return False  # deleted meanwhile
        try:
            converted, _checked = codecs.convert(data, target, require_lossless=True)
        except codecs.CodecError as exc:
            # Not for this object (a bit depth or layout the codec does not take): it stays as received.
            log.info("compression: an object is kept as received: %s", exc)
            return False
        if len(converted) >= len(data):
            return False  # nothing saved: keep the received bytes
        try:
            record = read_record(converted, len(converted), tenant)
        except Rejected as exc:
            log.warning("compression: the converted object cannot be indexed (%s); kept as received", exc.reason)
            return False
        record.source.calling_ae_title = calling_ae_title
        with self.blobs.stage() as staged:
            staged.write(converted)
            record.location.object_key = staged.commit(record.location.ref)
        try:
            result = self.metadata.replace_object(record, expected_object_key=key)
        except errors.InvalidArgument:
            self._reclaim(record.location.object_key)
            raise
        self._reclaim(result.unreferenced_object_key)
        if result.replaced:
            self.converted += 1
            self.saved_bytes += len(data) - len(converted)
        return result.replaced

    def _reclaim(self, key: str) -> None:
        if not key:
            return
        try:
            self.storage.delete(key)
        except errors.ServiceError as exc:
            log.warning("compression: could not delete an unreferenced object (the sweep will): %s", exc)


def compression(rules: Sequence[CompressionRule], storage: StorageClient, metadata: MetadataClient) -> Handler:
    return Compressor(rules, storage, metadata)
