#!/usr/bin/env python3
"""An external flowd worker: the pattern for running agent crews outside the runtime.

It long-polls a queue, keeps its lease alive with heartbeats while the crew works, and completes
the task with the crew's output (or fails it). Python standard library only.

    python3 examples/workers/crew_worker.py --url http://127.0.0.1:8080 --queue crews

A flow type sends a phase here with `handler = "external"` and `params = { queue = "crews" }`.
If this worker dies mid-task, its lease expires and the phase's next attempt goes to another
worker; if it comes back and reports late, flowd answers 409 and the report is dropped.
"""

import argparse
import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.request


class LeaseLost(Exception):
    """The server no longer recognizes our lease: another worker owns the task now."""


class Client:
    """The worker protocol: poll, heartbeat, complete, fail."""

    def __init__(self, base_url, api_key=None):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key

    def _post(self, path, body, timeout):
        data = json.dumps(body).encode()
        request = urllib.request.Request(self.base_url + path, data=data, method="POST")
        request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", "Bearer " + self.api_key)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = response.read()
                return response.status, json.loads(payload) if payload else None
        except urllib.error.HTTPError as error:
            payload = error.read()
            try:
                problem = json.loads(payload)
            except ValueError:
                problem = {"detail": payload.decode(errors="replace")}
            return error.code, problem

    def poll(self, queue, worker_id, wait_ms, lease_s):
        body = {"worker_id": worker_id, "wait_ms": wait_ms, "lease_s": lease_s}
        status, task = self._post("/v1/queues/%s/poll" % queue, body, wait_ms / 1000 + 10)
        if status == 204:
            return None
        if status != 200:
            raise RuntimeError("poll failed: %s %s" % (status, task))
        return task

    def report(self, task, action, body):
        body = dict(body, lease_id=task["lease_id"])
        status, answer = self._post("/v1/tasks/%s/%s" % (task["task_id"], action), body, 30)
        if status == 409:
            raise LeaseLost(answer.get("detail"))
        if status != 200:
            raise RuntimeError("%s failed: %s %s" % (action, status, answer))
        return answer


class Heartbeat(threading.Thread):
    """Extends the lease every third of its length until stopped or the lease is lost."""

    def __init__(self, client, task, lease_s):
        super().__init__(daemon=True)
        self.client, self.task, self.lease_s = client, task, lease_s
        self.stopped = threading.Event()
        self.lost = None

    def run(self):
        while not self.stopped.wait(self.lease_s / 3):
            try:
                self.client.report(self.task, "heartbeat", {"lease_s": self.lease_s})
            except LeaseLost as error:
                self.lost = error
                return
            except (OSError, RuntimeError) as error:
                log("heartbeat failed, retrying: %s" % error)


def run_crew(context, work_seconds):
    """Stands in for an agent crew: replace with the real crew's kickoff."""
    time.sleep(work_seconds)
    return {
        "worker": "crew_worker.py",
        "phase": context["phase"],
        "input": context["input"],
        "summary": "crew finished %s for flow %s" % (context["phase"], context["flow_id"]),
    }


def log(message):
    sys.stderr.write("crew_worker: %s\n" % message)
    sys.stderr.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--queue", default="crews")
    parser.add_argument("--api-key", default=os.environ.get("FLOWD_API_KEY"))
    parser.add_argument("--worker-id", default="%s-%d" % (socket.gethostname(), os.getpid()))
    parser.add_argument("--max-tasks", type=int, default=0, help="stop after this many (0: never)")
    parser.add_argument("--wait-ms", type=int, default=20000, help="long-poll wait")
    parser.add_argument("--lease-seconds", type=int, default=30)
    parser.add_argument("--work-seconds", type=float, default=2.0, help="simulated crew time")
    args = parser.parse_args()

    client = Client(args.url, args.api_key)
    done = 0
    while args.max_tasks == 0 or done < args.max_tasks:
        try:
            task = client.poll(args.queue, args.worker_id, args.wait_ms, args.lease_seconds)
        except (OSError, RuntimeError) as error:
            log("poll failed, retrying in 1 s: %s" % error)
            time.sleep(1)
            continue
        if task is None:
            continue
        log("leased task %s (flow %s, phase %s, attempt %s)"
            % (task["task_id"], task["flow_id"], task["phase"], task["attempt"]))
        heartbeat = Heartbeat(client, task, args.lease_seconds)
        heartbeat.start()
        try:
            output = run_crew(task["context"], args.work_seconds)
        except Exception as error:  # the crew failed: report it, the phase's policy decides
            heartbeat.stopped.set()
            try:
                client.report(task, "fail", {"error": repr(error), "retryable": True})
            except LeaseLost:
                pass
            done += 1
            continue
        heartbeat.stopped.set()
        heartbeat.join()
        if heartbeat.lost is not None:
            log("lease lost while working; dropping the result: %s" % heartbeat.lost)
            continue
        try:
            client.report(task, "complete", {"output": output})
            log("completed task %s" % task["task_id"])
        except LeaseLost as error:
            log("completion refused, the lease is stale: %s" % error)
        done += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
