"""zfarm: a Python client for the zfarm render farm.

    from zfarm import Farm

    farm = Farm("localhost:50051", token=None)
    job = farm.submit("a red fox in fresh snow", seed=42, width=768, height=768)
    for event in farm.watch(job):
        print(event.job.state, event.job.progress.step)
    farm.result(job, "fox.png")

The gRPC stubs (zfarm.v1.*_pb2 / *_pb2_grpc) are generated from the protos when
zfarm is built; this package adds the small layer above them.
"""

from zfarm.farm import Farm, FarmError, JobFailed
from zfarm.request_ids import canonical_spec_hash, derive_batch_id, derive_request_id

__all__ = [
    "Farm",
    "FarmError",
    "JobFailed",
    "canonical_spec_hash",
    "derive_batch_id",
    "derive_request_id",
]
