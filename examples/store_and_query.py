"""Store one instance and find it again through the gRPC API.

Run against a running server (the launcher prints the addresses):
    .venv/bin/python examples/store_and_query.py --ingest 127.0.0.1:50054 --metadata 127.0.0.1:50052 FILE.dcm
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc

from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import ingest_service_pb2 as ingest_pb
from common.gen.dicomserver.v1 import ingest_service_pb2_grpc as ingest_grpc
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.gen.dicomserver.v1 import metadata_service_pb2_grpc as md_grpc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ingest", default="127.0.0.1:50054")
    parser.add_argument("--metadata", default="127.0.0.1:50052")
    parser.add_argument("--tenant", default="default")
    parser.add_argument("file", type=Path)
    args = parser.parse_args()

    # Store: options first, then the Part 10 bytes in chunks, then end_of_instance.
    data = args.file.read_bytes()
    requests = [ingest_pb.StoreInstancesRequest(options=ingest_pb.StoreOptions(tenant=args.tenant))]
    chunk = 1024 * 1024  # messages stay well under gRPC's 4 MiB default
    requests += [ingest_pb.StoreInstancesRequest(chunk=data[i : i + chunk]) for i in range(0, len(data), chunk)]
    requests.append(ingest_pb.StoreInstancesRequest(end_of_instance=True))
    with grpc.insecure_channel(args.ingest) as ch:
        (outcome,) = ingest_grpc.IngestServiceStub(ch).StoreInstances(iter(requests)).outcomes
    if outcome.status != ingest_pb.STORE_STATUS_STORED:
        print(f"store failed: 0x{outcome.dicom_status:04X} {outcome.reason}", file=sys.stderr)
        return 1
    print(f"stored {outcome.ref.sop_instance_uid}")

    # Query: the instance level, scoped to the study we just stored.
    query = md_pb.QueryRequest(
        tenant=args.tenant,
        level=dicom_pb2.QUERY_LEVEL_INSTANCE,
        filters=[md_pb.Filter(tag="00080018", equal=outcome.ref.sop_instance_uid)],
        study_instance_uid=outcome.ref.study_instance_uid,
    )
    with grpc.insecure_channel(args.metadata) as ch:
        matches = md_grpc.MetadataServiceStub(ch).Query(query).matches
    for match in matches:
        attrs = json.loads(match)
        print(f"found {attrs['00080018']['Value'][0]} of class {attrs['00080016']['Value'][0]}")
    return 0 if len(matches) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
