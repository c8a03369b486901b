"""The routing consumer: InstanceStored events in, deliveries queued.

A rule's tenant, calling AE titles and SOP classes are answered by the
event itself. Modalities and `match` conditions are asked of the index: one
Query per rule and batch at the instance level, with the rule's filters and
the batch's SOP Instance UIDs as a UID list, so "any indexed attribute" means
exactly what QIDO-RS and C-FIND can filter on. The index is asked after the
instance was committed, so it answers for what is stored now (an instance
deleted meanwhile matches nothing).

"instances" rules queue a delivery per matching instance and destination;
"studies" rules note the study, and delivery.QuietStudies sends it whole
once it is quiet. Both are written in one transaction before the consumer
moves its offset: an event handled twice queues its deliveries twice (the
peer sees the same SOP Instance UID again), never none."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc

from common.clients import MetadataClient
from common.errors import InvalidArgument
from common.gen.dicomserver.v1 import dicom_pb2, events_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from eventbus.routing.config import MODALITY, SOP_INSTANCE_UID, Rule
from eventbus.routing.queue import DeliveryQueue, Quiet, Target

# SOP Instance UIDs per Query (a page of the index's answers).
QUERY_CHUNK = 200

Stored = tuple[events_pb2.Event, events_pb2.InstanceStored]


def _first(attrs: dict[str, Any], tag: str) -> str:
    values = (attrs.get(tag) or {}).get("Value") or [""]
    return str(values[0])


class RuleMatcher:
    """The routing consumer's handler (eventbus.handlers.Handler), with a
    batch form the consumer loop prefers."""

    def __init__(
        self,
        rules: Sequence[Rule],
        queue: DeliveryQueue,
        channel: grpc.Channel,
        notify: Callable[[Iterable[str]], None],
    ) -> None:
        self.rules = list(rules)
        self.queue = queue
        self._metadata = MetadataClient(channel)
        self._notify = notify
        # Events up to this outbox sequence were written before routing first
        # ran and are not routed (see start_sequence).
        self.since = 0

    def __call__(self, event: events_pb2.Event) -> None:
        self.handle_many([event])

    def handle_many(self, events: Sequence[events_pb2.Event]) -> None:
        stored: list[Stored] = [
            (ev, ev.instance_stored)
            for ev in events
            if ev.WhichOneof("kind") == "instance_stored" and ev.sequence > self.since
        ]
        if not stored:
            return
        targets: dict[tuple[str, str, str], Target] = {}
        quiet: dict[tuple[str, str, str], Quiet] = {}
        now = time.time()
        for rule in self.rules:
            matches = [
                (ev, st)
                for ev, st in stored
                if rule.admits(ev.tenant, st.source.calling_ae_title, st.location.sop_class_uid)
            ]
            if matches and rule.needs_index:
                matches = self._indexed(rule, matches)
            for ev, st in matches:
                ref = st.location.ref
                if rule.send == "studies":
                    at = ev.time.ToMicroseconds() / 1e6 if ev.HasField("time") else now
                    key = (rule.name, ev.tenant, ref.study_instance_uid)
                    if key not in quiet or quiet[key].last_event_at < at:
                        quiet[key] = Quiet(rule.name, ev.tenant, ref.study_instance_uid, at)
                    continue
                for dest in rule.destinations:
                    targets.setdefault(
                        (dest, ev.tenant, ref.sop_instance_uid),
                        Target(
                            dest,
                            ev.tenant,
                            ref.study_instance_uid,
                            ref.series_instance_uid,
                            ref.sop_instance_uid,
                            f"rule:{rule.name}",
                        ),
                    )
        if targets or quiet:
            self.queue.add(list(targets.values()), list(quiet.values()), now)
            self._notify({t.destination for t in targets.values()})

    def _indexed(self, rule: Rule, candidates: list[Stored]) -> list[Stored]:
        """The candidates the index says match the rule's modalities and filters."""
        by_uid = {st.location.ref.sop_instance_uid: (ev, st) for ev, st in candidates}
        uids = list(by_uid)
        matched: set[str] = set()
        filters = rule.filters
        for i in range(0, len(uids), QUERY_CHUNK):
            chunk = uids[i : i + QUERY_CHUNK]
            request = md_pb.QueryRequest(
                tenant=rule.tenant,
                level=dicom_pb2.QUERY_LEVEL_INSTANCE,
                filters=[*filters, md_pb.Filter(tag=SOP_INSTANCE_UID, uid_list=md_pb.ValueList(values=chunk))],
                include_fields=[MODALITY] if rule.modalities else [],
                limit=len(chunk),
            )
            while True:
                page = self._metadata.query(request, timeout=30)
                for raw in page.matches:
                    attrs = json.loads(raw)
                    if rule.modalities and _first(attrs, MODALITY) not in rule.modalities:
                        continue
                    matched.add(_first(attrs, SOP_INSTANCE_UID))
                if not page.truncated:
                    break
                request.offset += len(page.matches)
        return [by_uid[u] for u in uids if u in matched]


def latest_sequence(channel: grpc.Channel) -> int:
    """The newest outbox sequence. Raises common.errors.ServiceError."""
    return MetadataClient(channel).read_outbox_latest()


def check_rules(channel: grpc.Channel, rules: Sequence[Rule]) -> None:
    """Asks the index once per rule with conditions on it, so that a rule
    that filters on an attribute the index cannot filter on stops the start
    (InvalidArgument) instead of failing every event. Raises common.errors.ServiceError."""
    metadata = MetadataClient(channel)
    for rule in rules:
        if not rule.needs_index:
            continue
        try:
            metadata.query(
                md_pb.QueryRequest(
                    tenant=rule.tenant,
                    level=dicom_pb2.QUERY_LEVEL_INSTANCE,
                    filters=[*rule.filters, md_pb.Filter(tag=SOP_INSTANCE_UID, equal="1.2")],
                    limit=1,
                ),
                timeout=10,
            )
        except InvalidArgument as err:
            raise ValueError(f"routing rule {rule.name}: {err}") from None
