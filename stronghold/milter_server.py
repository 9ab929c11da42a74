"""Run the milter on every core: one listening socket, pre-forked workers.

Each worker runs a thread per connection, so scoring in one process is
serialised by the GIL.  The parent opens the socket and forks ``milter_workers``
children that each serve it; the kernel spreads connections among them.  Two
protocol engines (``milter_engine``): the native one (stronghold/nativemilter.py,
the protocol in C; the parent opens the socket itself), and libmilter through
pymilter (``milter.opensocket``, then ``milter.main()`` in each worker).  The parent restarts a worker that
dies, forwards SIGTERM/SIGINT, and on SIGHUP tells the workers (through shared
memory) to reload the model.

Over TCP, libmilter's small writes meet Postfix's delayed ACKs (~40 ms per
stall); we set TCP_NODELAY on the listening socket, which accepted
connections inherit on Linux.  The listening socket is non-blocking so that
a worker that loses the race for a connection goes back to polling (and
notices SIGTERM) instead of blocking in accept().

``_register`` re-does what ``Milter.runmilter`` does inside (the raw C-module
callbacks, the ``*_bytes`` wrappers of ``Milter.Base``) and then forks after
``opensocket``: pymilter's internals, not its documented API, so setup.cfg
pins pymilter to the version tested.  Move the pin only with the milter tests green.
"""

from __future__ import annotations

import faulthandler
import gc
import grp
import logging
import multiprocessing
import os
import signal
import socket
import stat
import sys
import time
from pathlib import Path

import Milter
import milter

from stronghold import cpupin, logfmt, metrics, modelsync, nativecore, nativemilter
from stronghold.config import Config, ConfigError
from stronghold.milter import FLAGS, factory
from stronghold.service import Service
from stronghold.store.errors import SchemaError, StoreError

log = logging.getLogger(__name__)
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
LISTEN_BACKLOG = 1024  # libmilter's default is small: busy Postfix would get refused (451)
METRICS_SLOT, SYNC_SLOT = 0, -1  # children beside the workers (slots 1..milter_workers)


def socket_spec(cfg: Config) -> str:
    return cfg.milter_socket or f"unix:{cfg.data_dir / 'milter.sock'}"


def engine(cfg: Config) -> str:
    """The protocol engine this configuration runs: "native" or "libmilter"."""
    built = nativemilter.core() is not None
    if cfg.milter_engine == "native" and not built:
        raise ConfigError("milter_engine = native, but the native core's milter protocol is not "
                          f"available ({nativecore.status()}); rebuild it or choose libmilter")
    if cfg.milter_engine == "libmilter" or not built:
        return "libmilter"
    return "native"


def _register(spec: str, timeout: int, service: Service) -> None:
    """What Milter.runmilter does before opening the socket, minus main(); every
    connection's milter gets ``service`` (each worker its forked copy)."""
    Milter.factory = factory(service)
    milter.set_flags(FLAGS)
    milter.set_exception_policy(milter.TEMPFAIL)  # a bug in a callback never lets mail through unchecked
    milter.set_connect_callback(Milter.connect_callback)
    milter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    milter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    milter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    milter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header(f, v))  # bytes: header_bytes only forwards
    milter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    milter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    milter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    milter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    milter.set_close_callback(Milter.close_callback)
    milter.setconn(spec)
    milter.settimeout(timeout)
    milter.setbacklog(LISTEN_BACKLOG)
    milter.register("stronghold", data=lambda ctx: ctx.getpriv().data(),
                    unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
                    negotiate=Milter.negotiate_callback)


def _tune_listener(spec: str) -> bool:
    """Find libmilter's listening socket among our fds and tune it for pre-forked workers.

    Non-blocking: every worker polls the one socket, all wake for a new
    connection and one wins; the others must get EAGAIN (libmilter then polls
    again) rather than sit in accept(), where SIGTERM cannot reach them until
    the next connection.  Linux does not pass O_NONBLOCK on to accepted
    sockets.  Over TCP also TCP_NODELAY, which accepted sockets do inherit.
    """
    if spec.startswith("unix:"):
        want: object = spec[5:]
    else:
        want = int(spec.split(":", 1)[1].split("@", 1)[0])
    for fd in range(3, 1024):
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
        except OSError:
            continue
        sock = socket.socket(fileno=fd)
        try:
            if sock.family == socket.AF_UNIX:
                found = sock.getsockname() == want
            elif sock.family in (socket.AF_INET, socket.AF_INET6):
                found = sock.getsockname()[1] == want
                if found:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            else:
                found = False
            if found:
                sock.setblocking(False)
                return True
        except OSError:
            pass
        finally:
            sock.detach()
    return False


class SocketInUse(ConfigError):
    """The configured milter socket belongs to a running milter (a setting clash: one line, exit 2)."""


def _claim_unix_socket(path: Path) -> None:
    """Refuse to start while another milter answers on ``path``: libmilter would remove its
    socket and bind ours, leaving it running unreachable (and our stop would then leave no
    socket at all).  A socket nobody answers on is stale, and libmilter replaces it."""
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return  # stale: nobody listens
    except OSError as exc:  # not ours to judge (permissions, a hung listener): leave it be
        raise SocketInUse(f"cannot tell whether {path} is in use ({exc}); remove it if it is stale") from exc
    finally:
        probe.close()
    raise SocketInUse(f"another milter is listening on {path}; stop it first (or give this one "
                      "another milter_socket)")


def _socket_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def remove_own_socket(path: Path, identity: tuple[int, int]) -> bool:
    """Remove the socket at ``path`` only if it is still the one we created (``identity``): a
    milter started after us may have put its own there.  True if removed."""
    if _socket_identity(path) != identity:
        return False
    os.unlink(path)
    return True


def _open_socket(kind: str, spec: str, cfg: Config, service: Service) -> socket.socket | None:
    """Bind and listen on ``spec``: the native engine's listener, or libmilter's (None).  A unix
    socket is made 0600 whatever the umask, so nobody connects before ``_share_socket`` opens it
    to the MTA's group (the file exists from bind() on, its mode set only after)."""
    previous = os.umask(0o177) if spec.startswith("unix:") else None
    try:
        if kind == "native":
            return nativemilter.open_listener(spec, LISTEN_BACKLOG)
        _register(spec, cfg.milter_timeout, service)
        milter.opensocket(True)
        return None
    finally:
        if previous is not None:
            os.umask(previous)


def _share_socket(path: Path, group: str) -> None:
    """Mode 0660 and the MTA's group on the socket, so Postfix (not everyone) can connect."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        log.warning("group %s does not exist; socket %s left to its owner only", group, path)
        os.chmod(path, 0o600)
        return
    os.chown(path, -1, gid)
    os.chmod(path, 0o660)


def _worker(cfg: Config, service: Service, slot: int, listener: socket.socket | None) -> None:
    """Child process: fresh DB connections, then serve until told to stop."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    logfmt.set_worker(f"w{slot}")
    cpu = cpupin.pin_worker(cfg.milter_cpu_affinity, slot, cfg.milter_workers)
    if cpu is not None:
        log.info("worker w%d (pid %d) kept on CPU %d", slot, os.getpid(), cpu)
    log.info("worker w%d (pid %d): %d objects from the supervisor kept out of garbage collection",
             slot, os.getpid(), gc.get_freeze_count())
    faulthandler.enable(all_threads=True)  # a native crash leaves every thread's stack in the log
    service.store.engine.dispose(close=False)
    if listener is not None:
        nativemilter.serve_worker(listener, service)
    else:
        try:
            milter.main()
        except milter.error as exc:
            log.error("worker %d: %s", os.getpid(), exc)
            os._exit(1)
    try:  # both engines return on SIGTERM once their connections are done
        service.db.drain()
    except StoreError as exc:
        log.error("worker %d: message-log writes lost at exit: %s", os.getpid(), exc)
    log.info("worker %d stopped", os.getpid())
    os._exit(0)


def _model_syncer(cfg: Config, service: Service) -> None:
    """Child process: pull the model published in the store, report the version this node runs."""
    logfmt.set_worker("sync")
    for sig in (signal.SIGHUP,):
        signal.signal(sig, signal.SIG_IGN)
    service.store.engine.dispose(close=False)
    modelsync.run(service.store, cfg.model_path, modelsync.node_name(cfg.node_name), cfg.model_sync_seconds)
    os._exit(0)


def _metrics_process(cfg: Config) -> None:
    """Child process: serve /metrics until SIGTERM (the supervisor's handlers are not ours)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logfmt.set_worker("metrics")
    try:
        metrics.serve(cfg)
    except OSError as exc:
        log.error("metrics on %s: %s", cfg.metrics_bind, exc)
    os._exit(1)


def serve(cfg: Config) -> int:
    """Open the socket, fork the workers, supervise them; returns an exit status."""
    logfmt.configure(cfg.log_format)
    spec = socket_spec(cfg)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    if spec.startswith("unix:"):
        Path(spec[5:]).parent.mkdir(parents=True, exist_ok=True)
    service = Service(cfg)
    service.incidents.recorder = metrics.enable(cfg)
    try:
        service.store.upgrade()
    except SchemaError as exc:  # not a passing outage: this code must not run on that schema
        log.error("not starting: %s", exc)
        service.store.dispose()
        return 2
    except StoreError as exc:  # keep running: messages get on_store_error until it is back
        log.error("database not ready at start (%s); messages get on_store_error=%s", exc, cfg.on_store_error)
    generation = multiprocessing.Value("i", 0, lock=False)
    service.model.external_generation = lambda: generation.value
    try:
        service.model()  # load once in the parent: workers share its pages
    except Exception as exc:  # noqa: BLE001 - any load failure is reported, workers retry
        log.error("starting without a usable model (%s); messages get on_model_error=%s",
                  exc, cfg.on_model_error)
    children: dict[int, tuple[float, int]] = {}  # pid -> (started, slot); 0: metrics, -1: model sync
    stopping = False

    def on_stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def on_hup(_signum: int, _frame: object) -> None:
        generation.value += 1
        log.info("SIGHUP: workers will reload the model")

    # Before the socket opens: a stop that comes as soon as it answers (systemd, a test) must find
    # these, not the default action, which would leave the socket behind.
    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    kind = engine(cfg)
    own_socket = None
    if spec.startswith("unix:"):
        _claim_unix_socket(Path(spec[5:]))
    listener = _open_socket(kind, spec, cfg, service)
    if spec.startswith("unix:"):
        _share_socket(Path(spec[5:]), cfg.milter_socket_group)
        own_socket = _socket_identity(Path(spec[5:]))
    if kind == "libmilter" and not _tune_listener(spec):
        log.warning("could not tune the listening socket %s: expect ~40 ms stalls over TCP "
                    "and slow stops", spec)
    log.info("milter listening on %s with %d workers, %s protocol engine; %s", spec, cfg.milter_workers,
             kind, nativecore.status())
    print(f"stronghold milter: listening on {spec} ({cfg.milter_workers} workers)", flush=True)

    # What the children inherit (modules, config, the model's holder) is moved out of the
    # collector's reach: their collections no longer write to those objects, so the pages stay
    # shared with the supervisor instead of being copied into each worker (docs/operations.md).
    gc.collect()
    gc.freeze()

    def spawn(slot: int) -> None:
        # A stop between the check and the fork would miss the new child and wait for it forever:
        # held back until the child is in ``children``.  The child starts with the default action
        # (dying before it serves anything loses nothing) until it sets its own handlers.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            if stopping:
                return
            pid = os.fork()
            if pid == 0:
                for sig in STOP_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
                if slot == METRICS_SLOT:
                    _metrics_process(cfg)
                if slot == SYNC_SLOT:
                    _model_syncer(cfg, service)
                _worker(cfg, service, slot, listener)
            children[pid] = (time.monotonic(), slot)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    service.store.engine.dispose()
    if cfg.metrics_bind:
        spawn(0)
    for slot in range(1, cfg.milter_workers + 1):
        spawn(slot)
    if cfg.model_sync_seconds > 0:
        spawn(SYNC_SLOT)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        child = children.pop(pid, None)
        metrics.worker_died(cfg, pid)
        if stopping or child is None:
            continue
        started, slot = child
        name = {METRICS_SLOT: "metrics server", SYNC_SLOT: "model sync"}.get(slot, f"worker w{slot}")
        log.error("%s %d exited (status %d); restarting", name, pid, status)
        if time.monotonic() - started < 1.0:
            time.sleep(1.0)  # a worker that dies at once: do not spin
        spawn(slot)
    if own_socket is not None:
        remove_own_socket(Path(spec[5:]), own_socket)
    return 0


if __name__ == "__main__":  # pragma: no cover - use `stronghold milter`
    sys.exit("run: stronghold milter")
