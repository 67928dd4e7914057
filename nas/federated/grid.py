"""An in-process Flower grid: the same ServerApp and ClientApp, no sockets, no subprocesses.

Flower 1.42 simulates only through Ray, which listens on every interface; the deployment
runtime (`nas.federated.runtime`) is the real thing but costs seconds per round in process
starts. `LocalGrid` implements `flwr.serverapp.Grid` by calling the ClientApp of each message's
node directly, one after another, with that node's own `Context` (node config, state); messages
pass through Flower's wire form (deflate / inflate) so the apps see what they would receive
over gRPC. `run_in_process` runs a ServerApp on it. It leans on flwr internals (the task
identity a Message needs, `Run`, the message id): flwr is pinned to 1.42.0, and
tests/nas/federated/test_grid.py fails loudly when those change.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = ["LocalGrid", "run_in_process"]

logger = logging.getLogger(__name__)

_SERVER_NODE_ID = 0  # Flower's SUPERLINK_NODE_ID
_RUN_ID = 1
_CLIENT_ERROR = 1  # flwr.common.constant.ErrorCode.CLIENT_APP_RAISED_EXCEPTION


def _wire(message: Message) -> Message:
    """`message` as the other end receives it (Flower's serialised form and back)."""
    objects = get_all_nested_objects(message)
    contents = {oid: obj.deflate() for oid, obj in objects.items()}
    copy = inflate_object_from_contents(message.object_id, contents)
    assert isinstance(copy, Message)
    copy.metadata.__dict__["_message_id"] = message.metadata.message_id  # not on the wire
    return copy


class LocalGrid(Grid):
    """Nodes living in this process; `push_messages` runs each node's ClientApp at once."""

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Mapping[int, Mapping[str, Any]],
        run_config: Mapping[str, Any],
    ) -> None:
        self.client_app = client_app
        self.contexts = {
            node: Context(_RUN_ID, node, dict(cfg), RecordDict(), dict(run_config))
            for node, cfg in node_configs.items()
        }
        self.down: set[int] = set()  # nodes that stop answering (tests of a dead client)
        self._replies: dict[str, Message] = {}
        self._count = 0
        self._run = Run.create_empty(_RUN_ID)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.contexts)

    def _next_id(self) -> str:
        self._count += 1
        return f"local-{self._count:08d}"

    def _call(self, message: Message) -> Message:
        node = message.metadata.dst_node_id
        try:
            reply = self.client_app(_wire(message), self.contexts[node])
        except Exception as err:  # the runtime turns a ClientApp's exception into an error reply
            logger.warning("node %d raised: %s", node, err)
            reply = Message(Error(_CLIENT_ERROR, traceback.format_exc()), reply_to=message)
        reply.metadata.__dict__["_message_id"] = self._next_id()
        return _wire(reply) if reply.has_content() else reply

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            if message.metadata.dst_node_id not in self.contexts:
                raise ValueError(f"no node {message.metadata.dst_node_id} in this grid")
            message.metadata.__dict__["_message_id"] = self._next_id()
            ids.append(message.metadata.message_id)
            if message.metadata.dst_node_id not in self.down:
                self._replies[message.metadata.message_id] = self._call(message)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


@contextmanager
def _server_identity() -> Iterator[None]:
    """Messages the server creates take their run and node ids from Flower's task identity."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, _RUN_ID, _SERVER_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def run_in_process(
    server_app: ServerApp,
    client_app: ClientApp,
    num_nodes: int,
    run_config: Mapping[str, Any],
    grid: LocalGrid | None = None,
) -> LocalGrid:
    """Run `server_app` against `num_nodes` in-process nodes of `client_app` (node i holds
    partition i of `num_nodes`); returns the grid (its contexts hold the nodes' state)."""
    if grid is None:
        configs = {
            1000 + i: {"partition-id": i, "num-partitions": num_nodes} for i in range(num_nodes)
        }
        grid = LocalGrid(client_app, configs, run_config)
    context = Context(_RUN_ID, _SERVER_NODE_ID, {}, RecordDict(), dict(run_config))
    with _server_identity():
        server_app(grid, context)
    return grid
