"""Request and batch ids derived exactly as the zfarm CLI derives them.

A request id is "<prefix>-<line>-<16 hex>", the hex being the start of the
SHA-256 of the job spec serialized deterministically with its deadline left out,
plus "-v<variant>" for a variant without a seed of its own. Submitting the same
specs again with the same prefix therefore names the same jobs, and the
scheduler returns them instead of rendering twice (as a re-run Jenkins step does
with the CLI).
"""

import hashlib
import os
import secrets


def canonical_spec_hash(spec):
    """64 hex digits: SHA-256 of `spec` (a zfarm.v1.JobSpec) without its deadline."""
    canonical = type(spec)()
    canonical.CopyFrom(spec)
    canonical.ClearField("deadline")
    return hashlib.sha256(canonical.SerializeToString(deterministic=True)).hexdigest()


def derive_request_id(prefix, spec, line=1, variant=0):
    """The CLI's request id for the job at `line` (1-based) and `variant` (0-based)."""
    rid = "%s-%d-%s" % (prefix, line, canonical_spec_hash(spec)[:16])
    if not spec.HasField("seed") and variant > 0:
        rid += "-v%d" % variant
    return rid


def derive_batch_id(prefix, request_ids):
    """The CLI's batch id for a batch whose jobs have `request_ids`, in order."""
    joined = "".join(rid + "\n" for rid in request_ids)
    return "%s-batch-%s" % (prefix, hashlib.sha256(joined.encode()).hexdigest()[:16])


def default_prefix():
    """$BUILD_TAG when set and non-empty (as the CLI uses it), else a random one."""
    tag = os.environ.get("BUILD_TAG", "")
    return tag if tag else "zfarm-" + secrets.token_hex(8)
