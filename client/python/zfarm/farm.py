"""Farm: submit, batch, watch and fetch results over zfarm's gRPC API.

Every call carries a deadline (`timeout` seconds, 30 by default) except
watch(), whose stream lasts until the job is final. A bearer token, when given,
goes in the "authorization" metadata as the CLI sends it. Not thread-safe: use
one Farm per thread (they may share nothing but the address).
"""

import hashlib
import os
import tempfile
import time

import grpc
from google.protobuf import timestamp_pb2

from zfarm import request_ids
from zfarm.v1 import error_details_pb2, job_pb2, job_service_pb2, job_service_pb2_grpc

_FINAL = (job_pb2.JOB_STATE_SUCCEEDED, job_pb2.JOB_STATE_FAILED, job_pb2.JOB_STATE_CANCELLED)
_FORMATS = {
    "png": job_pb2.OUTPUT_FORMAT_PNG,
    "jpeg": job_pb2.OUTPUT_FORMAT_JPEG,
    "jpg": job_pb2.OUTPUT_FORMAT_JPEG,
    "webp": job_pb2.OUTPUT_FORMAT_WEBP,
}
# Keys of a batch item (as in the CLI's prompts files) and the spec field each sets.
_ITEM_KEYS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "width": "width_px",
    "height": "height_px",
    "steps": "steps",
    "guidance": "guidance_scale",
    "priority": "priority",
    "output_name": "output_name",
    "model": "model",
    "webhook_url": "webhook_url",
    "quality": "quality",
}
_MAX_BATCH = 1000


# The binary trailer with the typed details of a failed call (zfarm.v1.ErrorDetails).
_DETAILS_TRAILER = "zfarm-error-details-bin"


class FarmError(Exception):
    """A call failed: `code` is the grpc.StatusCode, the message the scheduler's.

    `retry_after`: seconds after which the same call may succeed (RESOURCE_EXHAUSTED:
    a full queue or a per-principal limit), else None. `conflict_job_id`: the job
    a reused request id belongs to (INVALID_ARGUMENT, a different spec), else None.
    Both come from the call's typed details, never from the message text.
    """

    def __init__(self, code, message, details=None):
        super().__init__("%s: %s" % (code.name if code else "ERROR", message))
        self.code = code
        self.message = message
        self.retry_after = None
        self.conflict_job_id = None
        if details is not None and details.HasField("retry_info"):
            self.retry_after = details.retry_info.retry_delay_ms / 1000.0
        if details is not None and details.HasField("request_id_conflict"):
            self.conflict_job_id = details.request_id_conflict.job_id

    @classmethod
    def from_rpc(cls, e):
        """The FarmError of a grpc.RpcError, with its typed details."""
        details = None
        for key, value in e.trailing_metadata() or ():
            if key == _DETAILS_TRAILER:
                details = error_details_pb2.ErrorDetails.FromString(value)
        return cls(e.code(), e.details(), details)


class JobFailed(FarmError):
    """result() of a job that ended FAILED or CANCELLED; `job` is its final state."""

    def __init__(self, job):
        super().__init__(None, "job %s ended %s: %s" % (
            job.job_id, job_pb2.JobState.Name(job.state), job.error.message))
        self.job = job


def _job_id(job):
    return job if isinstance(job, str) else job.job_id


def _output_format(name):
    if name is None:
        return None
    value = _FORMATS.get(str(name).lower())
    if value is None:
        raise ValueError("output_format: unknown format %r (png, jpeg or webp)" % (name,))
    return value


def build_spec(prompt, negative_prompt="", width=1024, height=1024, steps=8, guidance=0.0,
               seed=None, priority=0, labels=None, output_name="", model="", webhook_url="",
               output_format=None, quality=0, deadline=None):
    """A zfarm.v1.JobSpec with the CLI's defaults, so derived request ids match it.

    The defaults are the scheduler's for fields left at 0 (proto/base/job_defaults.h;
    python_client_test checks them against what the scheduler fills in).

    `deadline`: seconds from now (a number) or None. `output_format`: "png",
    "jpeg" or "webp" (None = the scheduler's default, PNG).
    """
    spec = job_pb2.JobSpec(prompt=prompt, negative_prompt=negative_prompt, width_px=width,
                           height_px=height, steps=steps, guidance_scale=guidance,
                           priority=priority, output_name=output_name, model=model,
                           webhook_url=webhook_url, quality=quality)
    if seed is not None:
        spec.seed = seed
    for k, v in (labels or {}).items():
        spec.labels[k] = v
    fmt = _output_format(output_format)
    if fmt is not None:
        spec.output_format = fmt
    if deadline is not None:
        spec.deadline.CopyFrom(timestamp_pb2.Timestamp(seconds=int(time.time() + deadline)))
    return spec


_MAX_ADDRESSES = 16  # as the CLI's --scheduler list


def _parse_addresses(address):
    """"a:1" or "a:1,b:2" (an active scheduler and its standbys) -> ["a:1", "b:2"]."""
    out = [a.strip() for a in address.split(",")]
    if any(not a for a in out):
        raise ValueError("address: %r has an empty address (expected HOST:PORT[,HOST:PORT...])"
                         % address)
    if len(set(out)) != len(out):
        raise ValueError("address: %r lists an address twice" % address)
    if len(out) > _MAX_ADDRESSES:
        raise ValueError("address: %d addresses exceeds the limit of %d"
                         % (len(out), _MAX_ADDRESSES))
    return out


class Farm:
    """A connection to a zfarm scheduler, or to an active one and its standbys.

        farm = Farm("sched:50051", token=open("/run/secrets/zfarm").read().strip())
        job = farm.submit("a lighthouse at dusk", seed=7, output_format="webp")
        farm.result(job, "lighthouse.webp")   # waits until it is final

    `address` may list several schedulers, "sched-0:50051,sched-1:50051": a call
    that finds one down or a standby (UNAVAILABLE) is tried on the next at once,
    as the CLI's --scheduler list is.
    """

    def __init__(self, address, token=None, tls_ca=None, timeout=30.0, request_id_prefix=None):
        """`tls_ca`: PEM file of the CA that signed the scheduler (enables TLS).
        `request_id_prefix`: default prefix of derived request ids ($BUILD_TAG,
        else random per Farm)."""
        self._addresses = _parse_addresses(address)
        creds = None
        if tls_ca:
            with open(tls_ca, "rb") as f:
                creds = grpc.ssl_channel_credentials(f.read())
        self._channels = [grpc.secure_channel(a, creds) if creds else grpc.insecure_channel(a)
                          for a in self._addresses]
        self._stubs = [job_service_pb2_grpc.JobServiceStub(c) for c in self._channels]
        self._current = 0
        self._metadata = (("authorization", "Bearer " + token),) if token else ()
        self._timeout = timeout
        self._prefix = request_id_prefix or request_ids.default_prefix()

    @property
    def address(self):
        """The address calls go to now (the last one that answered)."""
        return self._addresses[self._current]

    @property
    def _stub(self):
        return self._stubs[self._current]

    def _next_address(self):
        self._current = (self._current + 1) % len(self._stubs)

    def close(self):
        for c in self._channels:
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request, timeout=None):
        """Runs JobService.`method`; UNAVAILABLE moves on to the next address, one round at most."""
        for tried in range(len(self._stubs)):
            try:
                return getattr(self._stub, method)(request, timeout=timeout or self._timeout,
                                                   metadata=self._metadata)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE and tried + 1 < len(self._stubs):
                    self._next_address()
                    continue
                raise FarmError.from_rpc(e) from None

    def submit(self, prompt, request_id=None, request_id_prefix=None, **spec_args):
        """Submits one job; returns the zfarm.v1.Job (its job_id, the seed used).

        `spec_args` are build_spec()'s (width, height, steps, seed, guidance,
        negative_prompt, priority, labels, output_name, model, output_format,
        quality, deadline). Without `request_id`, the id is derived as the CLI's
        `zfarm submit` derives it, so submitting the same spec again with the
        same prefix returns the existing job.
        """
        spec = build_spec(prompt, **spec_args)
        if request_id is None:
            request_id = request_ids.derive_request_id(request_id_prefix or self._prefix, spec)
        req = job_service_pb2.SubmitJobRequest(request_id=request_id, spec=spec)
        return self._call("SubmitJob", req).job

    def batch(self, items, batch_id=None, request_id_prefix=None, **defaults):
        """Submits several jobs as one batch; returns (batch_id, [zfarm.v1.Job]).

        Each item is a prompt string or a dict with the keys of the CLI's
        prompts files ("prompt", "width", "seed", "seeds": [..], "labels",
        "output_format", "quality", ...); `defaults` are build_spec() arguments
        every item starts from. Item i is line i+1 for the derived request ids,
        and a "seeds" list makes one job per seed, as `zfarm batch` does.
        """
        prefix = request_id_prefix or self._prefix
        planned = []  # (request_id, spec)
        for line, item in enumerate(items, start=1):
            if isinstance(item, str):
                item = {"prompt": item}
            item = dict(item)
            seeds = item.pop("seeds", None)
            if "seed" in item:
                seeds = [item.pop("seed")]
            labels = item.pop("labels", None)
            fmt = item.pop("output_format", None)
            unknown = set(item) - set(_ITEM_KEYS)
            if unknown:
                raise ValueError("line %d: unknown key(s) %s" % (line, ", ".join(sorted(unknown))))
            spec = build_spec(item.get("prompt", ""), **defaults)
            for k, v in item.items():
                setattr(spec, _ITEM_KEYS[k], v)
            for k, v in (labels or {}).items():
                spec.labels[k] = v
            if fmt is not None:
                spec.output_format = _output_format(fmt)
            if not spec.prompt:
                raise ValueError("line %d: empty prompt" % line)
            for variant, seed in enumerate(seeds or [None]):
                s = job_pb2.JobSpec()
                s.CopyFrom(spec)
                if seed is not None:
                    s.seed = seed
                planned.append((request_ids.derive_request_id(prefix, s, line, variant), s))
        if batch_id is None:
            batch_id = request_ids.derive_batch_id(prefix, [rid for rid, _ in planned])
        jobs = []
        for start in range(0, len(planned), _MAX_BATCH):
            req = job_service_pb2.SubmitJobsRequest(batch_id=batch_id)
            for rid, spec in planned[start:start + _MAX_BATCH]:
                req.jobs.add(request_id=rid, spec=spec)
            resp = self._call("SubmitJobs", req)
            batch_id = resp.batch_id or batch_id
            jobs.extend(r.job for r in resp.jobs)
        return batch_id, jobs

    def get(self, job):
        """The job's current state (a zfarm.v1.Job)."""
        return self._call("GetJob", job_service_pb2.GetJobRequest(job_id=_job_id(job)))

    def cancel(self, job):
        """Cancels a job that is not final; returns the ids cancelled."""
        req = job_service_pb2.CancelJobRequest(job_id=_job_id(job))
        return list(self._call("CancelJob", req).job_ids)

    def watch(self, job, timeout=None, max_outage=30.0):
        """Yields the job's zfarm.v1.JobEvent s (its current state first, then every
        state change and step) and stops after the event that makes it final.
        `timeout`: seconds for the whole watch (None = until final). When the
        scheduler is unavailable (a restart), the stream is opened again with
        backoff for up to `max_outage` seconds; it starts with the current state,
        so nothing final is missed (a step or two may be)."""
        req = job_service_pb2.WatchJobRequest(job_id=_job_id(job))
        end = None if timeout is None else time.monotonic() + timeout
        backoff, outage_start = 0.1, None
        while True:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise FarmError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                "watch of job %s timed out" % req.job_id)
            try:
                for event in self._stub.WatchJob(req, timeout=left, metadata=self._metadata):
                    backoff, outage_start = 0.1, None
                    yield event
                    if event.job.state in _FINAL:
                        return
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise FarmError.from_rpc(e) from None
                outage_start = outage_start or time.monotonic()
                if time.monotonic() - outage_start > max_outage:
                    raise FarmError.from_rpc(e) from None
                self._next_address()
                if self._current != 0:
                    continue  # the next address at once; back off after a whole round
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def wait(self, job, timeout=None):
        """Blocks until the job is final; returns its final zfarm.v1.Job."""
        last = None
        for event in self.watch(job, timeout=timeout):
            last = event.job
        return last if last is not None else self.get(job)

    def result(self, job, path, timeout=None):
        """Waits for the job, then writes its image to `path` whole (a temporary
        file in the same folder, fsync, rename) after checking its sha256.
        Returns the final zfarm.v1.Job; raises JobFailed if it did not succeed."""
        final = self.wait(job, timeout=timeout)
        if final.state != job_pb2.JOB_STATE_SUCCEEDED:
            raise JobFailed(final)
        data = bytearray()
        sha = final.result.sha256
        req = job_service_pb2.GetResultRequest(job_id=final.job_id)
        try:
            for chunk in self._stub.GetResult(req, timeout=timeout or self._timeout,
                                              metadata=self._metadata):
                if chunk.offset != len(data):
                    raise FarmError(grpc.StatusCode.DATA_LOSS, "result chunk out of order")
                data += chunk.data
                sha = sha or chunk.sha256
        except grpc.RpcError as e:
            raise FarmError.from_rpc(e) from None
        got = hashlib.sha256(data).hexdigest()
        if sha and got != sha:
            raise FarmError(grpc.StatusCode.DATA_LOSS,
                            "sha256 mismatch for job %s: %s != %s" % (final.job_id, got, sha))
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".tmp.")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        dirfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
        return final
