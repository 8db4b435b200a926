"""Start-up roll call: which processes of a multi-process job have started.

``jax.distributed.initialize`` blocks until every process registered and says nothing about
who is missing. Alongside it, process 0 listens on the coordinator's port + 1 (best effort;
``ACFORMER_ROLLCALL_PORT`` overrides it) and every process reports its id there once a second
and learns the ids seen so far, so a start-up timeout can name the missing process ids on
every host that reached process 0.
"""
from __future__ import annotations

import os
import socket
import threading
from typing import Optional, Set

ENV_PORT = "ACFORMER_ROLLCALL_PORT"


def rollcall_address(coordinator_address: str) -> tuple:
  host, _, port = coordinator_address.rpartition(":")
  override = os.environ.get(ENV_PORT)
  return host.strip("[]"), int(override) if override else int(port) + 1


class RollCall:
  """Runs the roll call for ``process_id`` of ``num_processes`` until :meth:`stop`."""

  def __init__(self, coordinator_address: str, num_processes: int, process_id: int):
    self.address = rollcall_address(coordinator_address)
    self.num_processes, self.process_id = int(num_processes), int(process_id)
    self.seen: Set[int] = {self.process_id}
    self.reached = process_id == 0
    self._stop = threading.Event()
    self._server: Optional[socket.socket] = None
    self._lock = threading.Lock()

  def start(self) -> "RollCall":
    if self.process_id == 0:
      try:
        self._server = socket.create_server(("", self.address[1]), reuse_port=False)
        self._server.settimeout(0.5)
      except OSError:
        self._server = None  # port taken: no roll call, start-up itself is unaffected
      target = self._serve
    else:
      target = self._report
    threading.Thread(target=target, name="acformer-rollcall", daemon=True).start()
    return self

  def stop(self) -> None:
    self._stop.set()
    if self._server is not None:
      self._server.close()

  def missing(self) -> Optional[list]:
    """Process ids not seen yet, or None when this process never reached process 0."""
    if not self.reached or (self.process_id == 0 and self._server is None):
      return None
    with self._lock:
      return sorted(set(range(self.num_processes)) - self.seen)

  def _serve(self) -> None:
    while self._server is not None and not self._stop.is_set():
      try:
        conn, _ = self._server.accept()
      except OSError:  # timeout or closed
        continue
      with conn:
        try:
          conn.settimeout(2.0)
          pid = int(conn.recv(32).decode().strip())
          with self._lock:
            if 0 <= pid < self.num_processes:
              self.seen.add(pid)
            reply = ",".join(map(str, sorted(self.seen)))
          conn.sendall(reply.encode() + b"\n")
        except (OSError, ValueError):
          pass

  def _report(self) -> None:
    while not self._stop.is_set():
      try:
        with socket.create_connection(self.address, timeout=2.0) as conn:
          conn.sendall(f"{self.process_id}\n".encode())
          reply = conn.recv(65536).decode().strip()
        with self._lock:
          self.seen |= {int(x) for x in reply.split(",") if x}
          self.reached = True
      except (OSError, ValueError):
        pass
      self._stop.wait(1.0)

  def summary(self) -> str:
    """One sentence for the start-up timeout message."""
    missing = self.missing()
    if missing is None:
      if self.process_id == 0:
        return f"the roll call on port {self.address[1]} could not start, so the missing processes are unknown"
      return (f"process 0's roll call at {self.address[0]}:{self.address[1]} was never reached: "
              "process 0 is missing or unreachable (missing process ids include [0])")
    return f"missing process ids: {missing} (joined: {sorted(set(range(self.num_processes)) - set(missing))})"
