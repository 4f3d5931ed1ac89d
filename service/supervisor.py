"""The main process's watch over the service's processes, and its drain on SIGTERM.

LitServe 0.2.19's own monitor either stops everything when a model worker dies or restarts it
without answering the requests it held (that bookkeeping lives in the API server processes,
not in the main process that restarts). This supervisor replaces it:

  - a model worker dies (crash, kill -9, out-of-memory kill): the batch it held (Shared.busy) is
    answered 503 at once, the worker is restarted, and readiness is false until it has loaded
    the model; a restarted worker that cannot load the model stops the service (exit 1);
  - an API server process or the queue manager dies: nothing could answer that process's
    clients, so the service stops with exit status 1 and the orchestrator restarts it;
  - SIGTERM (`drain`): readiness fails and new requests get 503 (the middleware), queued ones
    get 503 now, running ones get MLLM_AUDIT_DRAIN_TIMEOUT seconds to finish and 503 after it;
    then LitServe's shutdown, and exit status 0.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import time
from multiprocessing.connection import wait
from queue import Empty

from litserve.utils import WorkerSetupStatus
from mllm_audit.service import logs, metrics
from mllm_audit.service.shared import send_unavailable


class Supervisor:
    def __init__(self, server, manager, api_servers: dict):
        self.server = server  # the AuditServer (main process)
        self.manager = manager
        self.api_servers = list(api_servers.values())
        self.stopping = threading.Event()  # set when shutting down on purpose: deaths are expected then
        self.log = logs.get("mllm_audit.supervisor")

    def start(self) -> None:
        threading.Thread(target=self._watch, name="mllm-audit-supervisor", daemon=True).start()

    # ------------------------------------------------------------------ crashes
    def _watch(self) -> None:
        pruned = time.monotonic()
        while not self.stopping.is_set():
            workers = list(self.server.inference_workers)
            manager = self.manager._process  # multiprocessing's SyncManager keeps its process here
            wait([p.sentinel for p in [*workers, *self.api_servers, manager]], timeout=1.0)
            if self.stopping.is_set():
                return
            if not manager.is_alive():
                self._fail(f"the queue manager process died (exit code {manager.exitcode})")
            for process in self.api_servers:
                if not process.is_alive():
                    self._fail(f"API server process {process.pid} died (exit code {process.exitcode})")
            for worker_id, process in enumerate(workers):
                if not process.is_alive():
                    self._restart(worker_id, process)
            if time.monotonic() - pruned > 10:
                self.server.shared.prune(older_than=2 * self.server.settings.request_timeout)
                pruned = time.monotonic()

    def _restart(self, worker_id: int, process) -> None:
        server, shared = self.server, self.server.shared
        status_key = f"{server.audit_api.api_path.split('/')[-1]}_{worker_id}"
        if server.workers_setup_status.get(status_key) == WorkerSetupStatus.ERROR:
            self._fail(f"model worker {worker_id} could not load the model (see its log lines)")
        held = shared.busy.get(str(worker_id), [])
        for consumer, uid in held:
            send_unavailable(server._transport, consumer, uid, "the model worker running this request died; retry", 5.0)
        shared.busy[str(worker_id)] = []
        metrics.registry_metrics().worker_restarts.inc()
        self.log.error(
            "worker_died", worker=worker_id, pid=process.pid, exit_code=process.exitcode, answered_503=len(held)
        )
        server.inference_workers[worker_id] = server.launch_single_inference_worker(server.audit_api, worker_id)

    def _fail(self, reason: str) -> None:
        """Stop every process of the service and exit 1: an orchestrator restarts it whole."""
        self.stopping.set()
        self.log.error("service_failed", reason=reason, exit_code=1)
        for child in mp.active_children():
            child.kill()
        sys.stdout.flush()
        os._exit(1)

    # ------------------------------------------------------------------ SIGTERM
    def drain(self) -> None:
        """In a thread: answer or finish every request, then let LitServe shut down (exit 0)."""
        server, shared = self.server, self.server.shared
        timeout = server.settings.drain_timeout
        shared.draining.set()
        self.log.info("draining", in_flight=server.inflight.value, drain_timeout_s=timeout)
        deadline = time.monotonic() + timeout
        while server.inflight.value > 0 and time.monotonic() < deadline:
            self._refuse_queued()
            time.sleep(0.1)
        if server.inflight.value > 0:  # the drain time is up: what still runs is answered 503
            for held in shared.busy.values():
                for consumer, uid in held:
                    send_unavailable(server._transport, consumer, uid, "the service is shutting down; retry")
            self._refuse_queued()
            last = time.monotonic() + 5
            while server.inflight.value > 0 and time.monotonic() < last:
                time.sleep(0.1)
        self.log.info("drained", in_flight=server.inflight.value)
        self.stopping.set()
        server._shutdown_event.set()

    def _refuse_queued(self) -> None:
        queue = self.server._get_request_queue(self.server.audit_api.api_path)
        while True:
            try:
                consumer, uid, _, _ = queue.get_nowait()
            except Empty:
                return
            send_unavailable(self.server._transport, consumer, uid, "the service is shutting down; retry")
