"""The wire schema: every message type and every header key, declared once.

Code names header keys and message types through :class:`Key` and :class:`Msg` rather
than as string literals; :data:`FIELDS` says what each key means and what its value is,
and :data:`MESSAGES` which keys each message carries (``required``: read as
``header[key]``; ``optional``: read with a default), on which channel, from whom to
whom. The fuzz tests draw their messages from these tables, and docs/architecture.md
lists them. Nested vocabularies (query ops, notice events, control ops, reply states)
are here too.

Channels: ``client`` (client <-> a controller process's client ROUTER), ``engine``
(engine <-> the controller's, a split Hub's or a path's engine ROUTER), ``heartbeat``
(engine heartbeat thread <-> the heartbeat monitor), ``path`` (a split controller's
path <-> its Hub), ``data`` (client <-> an engine's direct data link).
"""
from __future__ import annotations

from dataclasses import dataclass


class Msg:
    """Message types: the value of the header's ``t``."""

    # client channel
    APPLY = "apply"  # call a function on engines (direct: tg/ids; load-balanced: lb/id)
    EXECUTE = "execute"  # run code on engines (direct)
    REPLY = "reply"  # a task's result, engine -> controller -> client (or made up by the controller)
    STREAM = "stream"  # output lines of a running task that asked for them (so)
    CONNECT = "connect"  # a client says hello on its receiving socket
    CONNECT_REPLY = "connect_reply"  # the engine table (and a split Hub's paths)
    CLOSE = "close"  # a client leaves
    QUERY = "query"  # a question for the Hub (op)
    QUERY_REPLY = "query_reply"  # its answer
    NOTIFY = "notify"  # engines came or went, a path was lost (ev)
    BATCH = "batch"  # several messages to one client in one (parts: frames of each)
    # engine channel
    REGISTER = "register"  # an engine asks for an id, or comes back under its id
    REGISTER_REPLY = "register_reply"
    UNREGISTER = "unregister"  # an engine leaves (SIGTERM)
    SHUTDOWN = "shutdown"  # the controller stops an engine (on its task queue)
    HELLO = "hello"  # an engine greets a split path; a client greets an engine's data link
    HELLO_REPLY = "hello_reply"
    # heartbeat channel (and a path's link to its Hub)
    PING = "ping"
    PONG = "pong"
    CONTROL = "control"  # abort, signal or shutdown, to an engine's heartbeat thread (op)
    # path channel
    JOIN = "join"  # a path joins its Hub
    JOIN_REPLY = "join_reply"
    ASK = "ask"  # the Hub asks a path (op, qid)
    ANSWER = "answer"  # the path's answer
    ENGINE_READY = "engine_ready"  # a path has seen an engine's hello
    ENGINE_GONE = "engine_gone"  # the Hub tells a path an engine left
    STOP = "stop"  # the Hub stops a path
    # data channel
    BULK = "bulk"  # the large buffers of a request or reply, by token


class Key:
    """Header keys."""

    # the envelope
    TYPE = "t"
    VERSION = "v"
    BUFFER_COUNT = "nb"
    # requests
    TARGETS = "tg"
    IDS = "ids"  # task ids: one per target of a direct request; those a query, abort or condition names
    ID = "id"  # a task's id; in engine messages (register_reply, hello, ...) an engine's id
    LOAD_BALANCED = "lb"
    FUNCTION_BYTES = "fl"
    FUNCTION_BUFFERS = "fb"
    SILENT = "silent"
    STREAM_OUTPUT = "so"
    RANKS = "rk"
    BUFFERS_FOR = "bt"
    RESULT_BACK = "rb"
    BULK_TOKEN = "bulk"
    RETRIES = "re"
    DEPENDENCY_TIMEOUT = "to"
    ONLY = "only"
    AFTER = "after"
    FOLLOW = "follow"
    # replies and streams
    ENGINE_ID = "eng"
    STATUS = "st"
    ENAME = "ename"
    EVALUE = "evalue"
    TRACEBACK = "tb"
    STARTED = "started"
    COMPLETED = "completed"
    STDOUT = "out"
    STDERR = "err"
    STREAM_NAME = "name"
    STREAM_TEXT = "text"
    # the client's session
    REQUEST_ID = "rid"
    SEND_AS = "send_as"
    REPLY_TO = "rt"
    # connecting, registering, joining
    ENGINES = "engines"
    SCHEDULER = "scheduler"
    PATHS = "paths"
    WANT_ID = "want_id"
    INFO = "info"
    HELD = "held"
    ANSWERED = "answered"
    KEPT = "kept"
    HEARTBEAT_PERIOD = "hb_period"
    CONTROLLER_TIMEOUT = "controller_timeout"
    SKIP = "skip"
    REPLAY = "replay"
    RETIRE_AT = "retire_at"
    JOB_END = "job_end"
    CLIENT_URLS = "client"
    ENGINE = "engine"  # a path's engine addresses (join); an engine's description (notify)
    PATH = "path"
    PID = "pid"
    HOST = "host"
    # queries, questions, answers
    OP = "op"
    ENGINE_IDS = "targets"
    PARTS = "parts"
    ID_BASE = "ib"  # a direct request to several engines: its task ids are ib/0, ib/1, ...
    TARGET_RUNS = "tr"  # a direct request's targets as runs of consecutive ids: first, count, first, ...
    VERBOSE = "verbose"
    RECORD_QUERY = "query"
    RECORD_KEYS = "keys"
    INTERRUPT = "interrupt"
    NEW_IDS = "new_ids"
    SIGNAL = "sig"
    STOP_HUB = "hub"
    OK = "ok"
    RESULT = "result"
    ERROR = "error"
    QUESTION_ID = "qid"
    WHO = "who"
    RENAMES = "renames"
    RUNS = "runs"
    # notices
    EVENT = "ev"
    WHY = "why"
    # heartbeat and data link
    UNKNOWN = "unknown"
    TOKEN = "tok"


# -- nested vocabularies ---------------------------------------------------------------------

#: Reply states (``st``).
STATUS_OK, STATUS_ERROR, STATUS_ABORTED = "ok", "error", "aborted"
#: Notice events (``ev`` of a notify).
EVENT_REGISTERED, EVENT_UNREGISTERED, EVENT_PATH_LOST = "registered", "unregistered", "path_lost"
#: Control operations (``op`` of a control message to an engine's heartbeat thread).
CONTROL_ABORT, CONTROL_SIGNAL, CONTROL_SHUTDOWN = "abort", "signal", "shutdown"


@dataclass(frozen=True)
class Field:
    """A header key: its literal, what its value is (for the fuzz tests: ``task_id``,
    ``task_ids``, ``engine_id``, ``engine_ids``, ``bool``, ``int``, ``number``, ``str``,
    ``strs``, ``bytes``, ``map``, ``any``), and what it means."""

    key: str
    kind: str
    meaning: str


FIELDS: dict[str, Field] = {field.key: field for field in (
    Field(Key.TYPE, "str", "message type (Msg)"),
    Field(Key.VERSION, "int", "protocol version"),
    Field(Key.BUFFER_COUNT, "int", "buffer frames after the envelope"),
    Field(Key.TARGETS, "engine_ids", "a direct request's target engines"),
    Field(Key.IDS, "task_ids", "task ids: one per target of a direct request; those a query or abort names"),
    Field(Key.ID, "task_id", "a task's id (load-balanced request, reply, stream); an engine's id in "
                                  "register_reply, hello, engine_ready, engine_gone and an unregistered notice"),
    Field(Key.LOAD_BALANCED, "bool", "a load-balanced request (the task path)"),
    Field(Key.FUNCTION_BYTES, "int", "bytes of the pickled function at the head of an apply's content"),
    Field(Key.FUNCTION_BUFFERS, "int", "buffers of the pickled function"),
    Field(Key.SILENT, "bool", "execute: return nothing of the last expression"),
    Field(Key.STREAM_OUTPUT, "bool", "send output lines while the task runs"),
    Field(Key.RANKS, "engine_ids", "MPI ranks of the targets: an MPI collective call"),
    Field(Key.BUFFERS_FOR, "engine_id", "the one target the buffers are for"),
    Field(Key.RESULT_BACK, "bytes", "the client's data-link identity, for large results sent straight back"),
    Field(Key.BULK_TOKEN, "task_id", "token of buffers that travel on the data link"),
    Field(Key.RETRIES, "int", "retries left for a load-balanced task"),
    Field(Key.DEPENDENCY_TIMEOUT, "number", "seconds a task waits for its dependencies"),
    Field(Key.ONLY, "engine_ids", "engines a load-balanced task may run on"),
    Field(Key.AFTER, "map", "time dependency: ids, all, success, failure"),
    Field(Key.FOLLOW, "map", "location dependency: ids, all, success, failure"),
    Field(Key.ENGINE_ID, "engine_id", "the engine that ran a task"),
    Field(Key.STATUS, "str", "a reply's state: ok, error, aborted"),
    Field(Key.ENAME, "str", "the exception's class name"),
    Field(Key.EVALUE, "str", "the exception's message"),
    Field(Key.TRACEBACK, "str", "the remote traceback (empty: made up by the controller)"),
    Field(Key.STARTED, "number", "when the task started (epoch seconds)"),
    Field(Key.COMPLETED, "number", "when it ended"),
    Field(Key.STDOUT, "str", "its captured stdout"),
    Field(Key.STDERR, "str", "its captured stderr"),
    Field(Key.STREAM_NAME, "str", "stdout or stderr"),
    Field(Key.STREAM_TEXT, "str", "streamed lines"),
    Field(Key.REQUEST_ID, "str", "a request id its answer echoes"),
    Field(Key.ID_BASE, "task_id", "task ids of a request to several engines: this, a slash, the target's index"),
    Field(Key.TARGET_RUNS, "any", "a request's targets as runs of consecutive engine ids: first, count, ..."),
    Field(Key.PARTS, "any", "a batch: how many frames each of its messages has; -n: one frame of n bytes, "
          "packed with the other small ones in the first buffer"),
    Field(Key.SEND_AS, "str", "the connecting client's sending identity"),
    Field(Key.REPLY_TO, "str", "the client's receiving identity"),
    Field(Key.ENGINES, "any", "the engine table (engine descriptions)"),
    Field(Key.SCHEDULER, "str", "the task scheduler's policy"),
    Field(Key.PATHS, "map", "a split controller's paths: their client (connect) or engine (register) addresses"),
    Field(Key.WANT_ID, "engine_id", "the id an engine asks for"),
    Field(Key.INFO, "map", "an engine's details: hostname, pid, data, mpi_rank/size/world, job_end, retire_at"),
    Field(Key.HELD, "task_ids", "tasks an engine holds (queued or running)"),
    Field(Key.ANSWERED, "task_ids", "tasks it answered lately"),
    Field(Key.KEPT, "task_ids", "answered tasks whose replies it can send again"),
    Field(Key.HEARTBEAT_PERIOD, "number", "seconds between heartbeats"),
    Field(Key.CONTROLLER_TIMEOUT, "number", "silence after which an engine gives up on its controller"),
    Field(Key.SKIP, "task_ids", "held tasks that are no longer the engine's"),
    Field(Key.REPLAY, "task_ids", "kept replies to send again"),
    Field(Key.RETIRE_AT, "number", "when an engine stops taking load-balanced tasks (epoch seconds)"),
    Field(Key.JOB_END, "number", "when its batch job ends"),
    Field(Key.CLIENT_URLS, "strs", "a path's addresses for clients"),
    Field(Key.ENGINE, "strs", "a path's addresses for engines; in a notice, the engine's description"),
    Field(Key.PATH, "str", "a path's kind: direct or task"),
    Field(Key.PID, "int", "a process id"),
    Field(Key.HOST, "str", "a host name"),
    Field(Key.OP, "str", "a query's, question's or control message's operation"),
    Field(Key.ENGINE_IDS, "engine_ids", "engines a query names (None: all)"),
    Field(Key.VERBOSE, "bool", "queue_status: ids instead of counts"),
    Field(Key.RECORD_QUERY, "map", "db_query: a Mongo-style filter on task records"),
    Field(Key.RECORD_KEYS, "strs", "db_query: the record fields wanted"),
    Field(Key.INTERRUPT, "bool", "abort: also interrupt running tasks"),
    Field(Key.NEW_IDS, "task_ids", "resubmit: a new id for each old one"),
    Field(Key.SIGNAL, "int", "a signal number"),
    Field(Key.STOP_HUB, "bool", "shutdown: stop the controller too"),
    Field(Key.OK, "bool", "the answer is a success"),
    Field(Key.RESULT, "any", "the answer"),
    Field(Key.ERROR, "str", "why it is not"),
    Field(Key.QUESTION_ID, "int", "the Hub's question id"),
    Field(Key.WHO, "bytes", "the client a path answers (or runs tasks) for"),
    Field(Key.RENAMES, "map", "resubmit: old task id -> new task id"),
    Field(Key.RUNS, "any", "resubmit: [[new id, frame count], ...] of the buffers"),
    Field(Key.EVENT, "str", "what a notice tells: registered, unregistered, path_lost"),
    Field(Key.WHY, "str", "a reason, for people"),
    Field(Key.UNKNOWN, "bool", "pong: the controller does not know this engine (register again)"),
    Field(Key.TOKEN, "task_id", "which request or reply bulk buffers belong to"),
)}


@dataclass(frozen=True)
class Message:
    """A message type as it travels on one channel."""

    type: str
    channel: str
    sender: str
    receiver: str
    meaning: str
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()


K = Key  # short, for the table below
_REQUEST = (K.RANKS, K.BUFFERS_FOR, K.RESULT_BACK, K.BULK_TOKEN)
MESSAGES: tuple[Message, ...] = (
    Message(Msg.APPLY, "client", "client", "controller, then engine", "call a function on engines",
            (), (K.TARGETS, K.TARGET_RUNS, K.IDS, K.ID_BASE, K.ID, K.LOAD_BALANCED, K.FUNCTION_BYTES, K.FUNCTION_BUFFERS, K.RETRIES,
                 K.DEPENDENCY_TIMEOUT, K.ONLY, K.AFTER, K.FOLLOW, *_REQUEST)),
    Message(Msg.EXECUTE, "client", "client", "controller, then engine", "run code on engines",
            (), (K.TARGETS, K.TARGET_RUNS, K.IDS, K.ID_BASE, K.SILENT, K.STREAM_OUTPUT, K.RESULT_BACK, K.LOAD_BALANCED)),
    Message(Msg.REPLY, "engine", "engine (or the controller)", "controller, then client", "a task's result",
            (K.ID,), (K.ENGINE_ID, K.STATUS, K.ENAME, K.EVALUE, K.TRACEBACK, K.STARTED, K.COMPLETED, K.STDOUT,
                           K.STDERR, K.BULK_TOKEN)),
    Message(Msg.STREAM, "engine", "engine", "controller, then client", "output of a running task",
            (K.ID,), (K.ENGINE_ID, K.STREAM_NAME, K.STREAM_TEXT)),
    Message(Msg.CONNECT, "client", "client", "controller process", "hello on the receiving socket",
            (), (K.REQUEST_ID, K.SEND_AS)),
    Message(Msg.CONNECT_REPLY, "client", "controller process", "client", "the engine table and a split Hub's paths",
            (K.ENGINES,), (K.REQUEST_ID, K.SCHEDULER, K.PATHS)),
    Message(Msg.CLOSE, "client", "client", "controller process", "the client leaves"),
    Message(Msg.QUERY, "client", "client", "controller or split Hub", "a question for the Hub",
            (K.OP,), (K.REQUEST_ID, K.REPLY_TO, K.ENGINE_IDS, K.VERBOSE, K.RECORD_QUERY, K.RECORD_KEYS, K.IDS,
                      K.INTERRUPT, K.NEW_IDS, K.SIGNAL, K.STOP_HUB)),
    Message(Msg.QUERY_REPLY, "client", "controller or split Hub", "client", "its answer",
            (K.OK,), (K.REQUEST_ID, K.RESULT, K.ERROR)),
    Message(Msg.BATCH, "client", "controller process", "client",
            "the messages for one client from one turn of the loop, in order", (K.PARTS,)),
    Message(Msg.NOTIFY, "client", "controller or split Hub", "every client", "engines came or went, a path is lost",
            (K.EVENT,), (K.ENGINE, K.ID, K.PATH, K.WHY)),
    Message(Msg.REGISTER, "engine", "engine", "controller or split Hub", "ask for an id, or come back under one",
            (), (K.WANT_ID, K.INFO, K.HELD, K.ANSWERED, K.KEPT)),
    Message(Msg.REGISTER_REPLY, "engine", "controller or split Hub", "engine", "the engine's id and settings",
            (), (K.ID, K.HEARTBEAT_PERIOD, K.ERROR, K.CONTROLLER_TIMEOUT, K.SKIP, K.REPLAY, K.PATHS)),
    Message(Msg.UNREGISTER, "engine", "engine", "controller or split Hub", "the engine leaves"),
    Message(Msg.SHUTDOWN, "engine", "controller or split Hub", "engine", "stop (on the task queue)"),
    Message(Msg.HELLO, "engine", "engine", "split path", "greet a path after registering",
            (K.ID,), (K.RETIRE_AT, K.JOB_END, K.HELD, K.ANSWERED, K.KEPT)),
    Message(Msg.HELLO_REPLY, "engine", "split path", "engine", "what to skip and send again", (), (K.SKIP, K.REPLAY)),
    Message(Msg.PING, "heartbeat", "engine heartbeat thread", "heartbeat monitor", "alive"),
    Message(Msg.PONG, "heartbeat", "heartbeat monitor", "engine heartbeat thread", "alive too",
            (), (K.UNKNOWN, K.HEARTBEAT_PERIOD)),
    Message(Msg.CONTROL, "heartbeat", "controller, through the monitor", "engine heartbeat thread",
            "abort, signal or shutdown while a task runs", (K.OP,), (K.IDS, K.INTERRUPT, K.SIGNAL)),
    Message(Msg.JOIN, "path", "split path", "split Hub", "join the controller",
            (K.PATH, K.CLIENT_URLS, K.ENGINE), (K.SCHEDULER, K.PID, K.HOST)),
    Message(Msg.JOIN_REPLY, "path", "split Hub", "split path", "accepted or refused", (K.OK,), (K.ERROR,)),
    Message(Msg.PING, "path", "split path", "split Hub", "alive"),
    Message(Msg.PONG, "path", "split Hub", "split path", "alive too"),
    Message(Msg.ENGINE_READY, "path", "split path", "split Hub", "the path has seen an engine", (K.ID,)),
    Message(Msg.ENGINE_GONE, "path", "split Hub", "split path", "an engine left", (K.ID,), (K.WHY,)),
    Message(Msg.ASK, "path", "split Hub", "split path", "a question for the path's records",
            (K.OP,), (K.QUESTION_ID, K.ENGINE_IDS, K.VERBOSE, K.RECORD_QUERY, K.RECORD_KEYS, K.IDS, K.WHO,
                      K.RENAMES, K.RUNS)),
    Message(Msg.ANSWER, "path", "split path", "split Hub", "the path's answer",
            (K.QUESTION_ID,), (K.OK, K.RESULT, K.ERROR)),
    Message(Msg.STOP, "path", "split Hub", "split path", "stop"),
    Message(Msg.HELLO, "data", "client", "engine data link", "open a direct data link", (), (K.REQUEST_ID,)),
    Message(Msg.HELLO_REPLY, "data", "engine data link", "client", "the link is open", (), (K.REQUEST_ID,)),
    Message(Msg.BULK, "data", "client or engine", "engine or client", "the large buffers of a request or reply",
            (), (K.TOKEN,)),
)
#: Every message type.
TYPES = sorted({message.type for message in MESSAGES})

