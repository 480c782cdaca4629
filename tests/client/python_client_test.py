"""The Python client (package zfarm, <build>/python) against a real farm: a
zfarm-scheduler and a CPU zfarm-worker serving the tiny model, on loopback.

Also proves that the client derives the same request and batch ids as the CLI:
the CLI submits first, then the Python client submits the same specs with the
same prefix and gets the same jobs back (created = false, same request ids).

Run by ctest (python_client_test) with ZFARM_*_BIN, ZFARM_TINY_MODEL_DIR and
PYTHONPATH set; Debian's python3 with python3-grpcio.
"""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import unittest

import grpc

import zfarm
from zfarm.v1 import job_pb2, job_service_pb2

SCHEDULER = os.environ["ZFARM_SCHEDULER_BIN"]
WORKER = os.environ["ZFARM_WORKER_BIN"]
CLI = os.environ["ZFARM_CLI_BIN"]
MODEL = os.environ["ZFARM_TINY_MODEL_DIR"]


def wait_for_line(log_path, needle, proc, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with open(log_path, errors="replace") as f:
            for line in f:
                if needle in line:
                    return line[line.index(needle) + len(needle):].strip()
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    with open(log_path, errors="replace") as f:
        raise AssertionError("no %r in %s:\n%s" % (needle, log_path, f.read()[-4000:]))


class FarmFixture(unittest.TestCase):
    with_worker = True
    scheduler_flags = ()

    @classmethod
    def start_scheduler(cls, port=0):
        log = os.path.join(cls.dir, "scheduler-%d.log" % len(cls.procs))
        with open(log, "w") as f:  # the child keeps its own descriptor
            sched = subprocess.Popen(
                [SCHEDULER, "--listen=127.0.0.1:%d" % port, "--state-dir=" + cls.dir + "/state",
                 "--output-root=" + cls.out, "--heartbeat_interval=200ms", "--lease_timeout=2s"]
                + list(cls.scheduler_flags),
                stdout=f, stderr=subprocess.STDOUT)
        cls.procs.append(sched)
        cls.address = wait_for_line(log, "listening on ", sched, 30).split()[0]
        return sched

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="zfarm-python-")
        cls.out = os.path.join(cls.dir, "out")
        os.makedirs(cls.out)
        cls.procs = []
        cls.start_scheduler()
        cls.farm = zfarm.Farm(cls.address, timeout=30, request_id_prefix="py-default")
        if not cls.with_worker:
            return
        wlog = os.path.join(cls.dir, "worker.log")
        with open(wlog, "w") as f:
            worker = subprocess.Popen(
                [WORKER, "serve", "--scheduler=" + cls.address, "--model=" + MODEL,
                 "--output-root=" + cls.out, "--name=py-w1", "--warmup=64x64", "--warmup-steps=1",
                 "--min-free-disk-mb=1"],
                stdout=f, stderr=subprocess.STDOUT)
        cls.procs.append(worker)

    @classmethod
    def tearDownClass(cls):
        cls.farm.close()
        for p in reversed(cls.procs):
            if p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(cls.dir, ignore_errors=True)

    def cli(self, *args):
        r = subprocess.run([CLI] + list(args) + ["--scheduler", self.address, "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


class PythonClientTest(FarmFixture):
    def test_submit_watch_result_png_and_webp(self):
        for fmt, magic in (("png", b"\x89PNG\r\n\x1a\n"), ("webp", b"RIFF")):
            with self.subTest(fmt=fmt):
                job = self.farm.submit("a lighthouse at dusk", width=256, height=256, steps=3,
                                       seed=7, output_format=fmt, labels={"suite": "python"})
                self.assertTrue(job.job_id.startswith("j-"))
                self.assertEqual(job.spec.seed, 7)
                events = list(self.farm.watch(job, timeout=120))
                self.assertGreater(len(events), 0)
                states = [e.job.state for e in events]
                self.assertEqual(states[-1], job_pb2.JOB_STATE_SUCCEEDED,
                                 events[-1].job.error.message)
                self.assertEqual(states.count(job_pb2.JOB_STATE_SUCCEEDED), 1)
                steps = [e.job.progress.step for e in events if e.job.progress.total_steps]
                self.assertEqual(steps, sorted(steps))
                path = os.path.join(self.dir, "result-" + fmt)
                final = self.farm.result(job, path)
                with open(path, "rb") as f:
                    data = f.read()
                self.assertTrue(data.startswith(magic))
                self.assertEqual(hashlib.sha256(data).hexdigest(), final.result.sha256)
                self.assertEqual(final.result.media_type, "image/" + fmt)
                self.assertTrue(final.result.path.endswith("." + fmt))
                leftovers = [n for n in os.listdir(self.dir) if ".tmp." in n]
                self.assertEqual(leftovers, [])

    def test_same_request_ids_as_the_cli(self):
        # submit: the CLI first, then the client with the same spec and prefix.
        args = ["--prompt", "a red fox, ink", "--width", "256", "--height", "256", "--steps",
                "2", "--seed", "11", "--label", "k=v", "--output-format", "jpeg", "--quality",
                "80", "--request-id-prefix", "ci-42"]
        (cli_job,) = self.cli("submit", *args)
        job = self.farm.submit("a red fox, ink", width=256, height=256, steps=2, seed=11,
                               labels={"k": "v"}, output_format="jpeg", quality=80,
                               request_id_prefix="ci-42")
        self.assertEqual(job.request_id, cli_job["request_id"])
        self.assertEqual(job.job_id, cli_job["job"])
        spec = zfarm.farm.build_spec("a red fox, ink", width=256, height=256, steps=2, seed=11,
                                     labels={"k": "v"}, output_format="jpeg", quality=80)
        self.assertEqual(zfarm.derive_request_id("ci-42", spec), cli_job["request_id"])
        # A different spec derives a different id.
        spec.steps = 3
        self.assertNotEqual(zfarm.derive_request_id("ci-42", spec), cli_job["request_id"])

        # batch: a prompts file with a plain line, a JSON line with a seed sweep.
        prompts = os.path.join(self.dir, "prompts.txt")
        with open(prompts, "w") as f:
            f.write("a plain line\n")
            f.write('{"prompt": "swept", "seeds": [1, 2], "width": 256, "output_format": "webp"}\n')
        cli_jobs = self.cli("batch", "--prompts", prompts, "--height", "256", "--width", "256",
                            "--steps", "1", "--request-id-prefix", "ci-43")
        batch_id, jobs = self.farm.batch(
            ["a plain line",
             {"prompt": "swept", "seeds": [1, 2], "width": 256, "output_format": "webp"}],
            height=256, width=256, steps=1, request_id_prefix="ci-43")
        self.assertEqual([j.request_id for j in jobs], [j["request_id"] for j in cli_jobs])
        self.assertEqual([j.job_id for j in jobs], [j["job"] for j in cli_jobs])
        self.assertEqual(batch_id, cli_jobs[0]["batch"])
        self.assertEqual(len(jobs), 3)
        for j in jobs:
            self.assertEqual(self.farm.wait(j, timeout=120).state, job_pb2.JOB_STATE_SUCCEEDED)

    def test_bad_input_names_the_field(self):
        with self.assertRaises(zfarm.FarmError) as e:
            self.farm.submit("x", output_format="webp", quality=101)
        self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("spec.quality", e.exception.message)
        with self.assertRaises(ValueError):
            self.farm.submit("x", output_format="gif")
        with self.assertRaises(ValueError):
            self.farm.batch([{"prompt": "x", "colour": "red"}])

    def test_build_spec_defaults_are_the_schedulers(self):
        # A spec with every default left at 0: the scheduler's answer shows what it filled.
        req = job_service_pb2.SubmitJobRequest(
            request_id="py-defaults", spec=job_pb2.JobSpec(prompt="the scheduler's defaults"))
        filled = self.farm._call("SubmitJob", req).job
        self.farm.cancel(filled)
        ours = zfarm.farm.build_spec("the scheduler's defaults")
        self.assertEqual((ours.width_px, ours.height_px, ours.steps),
                         (filled.spec.width_px, filled.spec.height_px, filled.spec.steps))

    def test_request_id_conflict_is_typed(self):
        job = self.farm.submit("conflict a", request_id="py-conflict", width=256, height=256,
                               steps=1, seed=5)
        with self.assertRaises(zfarm.FarmError) as e:
            self.farm.submit("conflict b", request_id="py-conflict", width=256, height=256,
                             steps=1, seed=5)
        self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(e.exception.conflict_job_id, job.job_id)
        self.assertIsNone(e.exception.retry_after)
        with self.assertRaises(zfarm.FarmError) as e:
            self.farm.submit("x", output_format="webp", quality=101)
        self.assertIsNone(e.exception.conflict_job_id)

    def test_cancelled_job_raises_job_failed(self):
        job = self.farm.submit("a long one", width=256, height=256, steps=50, seed=3)
        self.farm.cancel(job)
        with self.assertRaises(zfarm.JobFailed) as e:
            self.farm.result(job, os.path.join(self.dir, "never.png"), timeout=60)
        self.assertEqual(e.exception.job.state, job_pb2.JOB_STATE_CANCELLED)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "never.png")))


class WatchReconnectTest(FarmFixture):
    with_worker = False  # jobs stay QUEUED until cancelled

    def test_watch_survives_a_scheduler_restart(self):
        job = self.farm.submit("waits for a worker", width=256, height=256, steps=1, seed=1)
        events = self.farm.watch(job, timeout=120)
        first = next(events)
        self.assertEqual(first.job.state, job_pb2.JOB_STATE_QUEUED)
        # kill -9 and restart on the same port; the journal keeps the job.
        port = int(self.address.rsplit(":", 1)[1])
        self.procs[0].kill()
        self.procs[0].wait()
        self.start_scheduler(port)
        self.assertEqual(self.farm.cancel(job), [job.job_id])
        rest = list(events)  # reconnects, gets the current (final) state first
        self.assertGreater(len(rest), 0)
        self.assertEqual(rest[-1].job.state, job_pb2.JOB_STATE_CANCELLED)
        self.assertEqual(rest[-1].job.job_id, job.job_id)


class StandbyStandIn(grpc.GenericRpcHandler):
    """Answers every RPC UNAVAILABLE as a standby scheduler does; counts them."""

    def __init__(self):
        self.refused = 0

    def service(self, handler_call_details):
        def refuse(request, context):
            self.refused += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "scheduler s-1 is a standby")
        return grpc.unary_unary_rpc_method_handler(refuse)


class AddressListTest(FarmFixture):
    with_worker = False  # jobs stay QUEUED: the calls are what is tested

    def test_a_dead_address_and_a_standby_are_passed_by(self):
        from concurrent import futures
        standby = StandbyStandIn()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                             handlers=[standby])
        standby_address = "127.0.0.1:%d" % server.add_insecure_port("127.0.0.1:0")
        server.start()
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            dead = "127.0.0.1:%d" % probe.getsockname()[1]
        try:
            farm = zfarm.Farm(",".join([dead, standby_address, self.address]), timeout=10)
            job = farm.submit("through the list", width=256, height=256, steps=1, seed=3)
            self.assertEqual(farm.address, self.address)
            self.assertGreaterEqual(standby.refused, 1)
            self.assertEqual(farm.get(job).job_id, job.job_id)
            self.assertEqual(farm.cancel(job), [job.job_id])
            farm.close()
            # Only a standby: the UNAVAILABLE comes through, typed.
            only = zfarm.Farm(standby_address, timeout=5)
            with self.assertRaises(zfarm.FarmError) as e:
                only.get(job)
            self.assertEqual(e.exception.code, grpc.StatusCode.UNAVAILABLE)
            only.close()
        finally:
            server.stop(0)
        for bad in ("a:1,,b:2", "a:1,a:1", ""):
            with self.assertRaises(ValueError) as e:
                zfarm.Farm(bad)
            self.assertIn("address", str(e.exception))


class QueueFullTest(FarmFixture):
    with_worker = False  # the one queued job holds the only slot until cancelled
    scheduler_flags = ("--max-queued-jobs=1", "--retry-after=400ms")

    def test_full_queue_carries_a_retry_delay_the_cli_waits(self):
        first = self.farm.submit("holds the slot", width=256, height=256, steps=1, seed=1)
        with self.assertRaises(zfarm.FarmError) as e:
            self.farm.submit("no room", width=256, height=256, steps=1, seed=2)
        self.assertEqual(e.exception.code, grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(e.exception.retry_after, 0.4)
        self.assertIsNone(e.exception.conflict_job_id)
        # The CLI submits again after the delay it was given, until the slot is free.
        log = os.path.join(self.dir, "cli.log")
        env = dict(os.environ, GLOG_minloglevel="0")
        with open(log, "w") as f:
            cli = subprocess.Popen(
                [CLI, "submit", "--prompt", "waits for room", "--width", "256", "--height",
                 "256", "--steps", "1", "--scheduler", self.address, "--json"],
                stdout=subprocess.PIPE, stderr=f, text=True, env=env)
        try:
            wait_for_line(log, "event=retry rpc=SubmitJob code=RESOURCE_EXHAUSTED delay_ms=400",
                          cli, 30)
            self.farm.cancel(first)
            out, _ = cli.communicate(timeout=60)
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait()
        self.assertEqual(cli.returncode, 0, out)
        (line,) = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        self.assertEqual(self.farm.get(line["job"]).spec.prompt, "waits for room")


if __name__ == "__main__":
    unittest.main()
