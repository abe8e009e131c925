"""Server-side batching: the images of concurrent requests in one signature call."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from components.deploy.server.protocol import InvalidInput

ModelCall = Callable[[list[bytes]], dict[str, np.ndarray]]
# Queued by ``Batcher.close``: the worker ends once the requests queued before it are run.
_CLOSE = object()


@dataclasses.dataclass
class _Pending:
    images: list[bytes]
    future: asyncio.Future


class Batcher:
    """Runs the images of concurrent requests together, one model call at a time.

    ``predict`` queues a request's images; a worker task takes the queued requests, up
    to ``max_size`` images (a larger request goes alone; requests are never split), runs
    ``run`` on them in the event loop's default executor, and hands each request its own
    rows. Requests that arrive while a call runs make up the next call, so batches grow
    with load; ``timeout_s`` is how long the first request of a batch waits for more
    when none is queued. When a batch fails with ``InvalidInput`` (an image that does not
    decode), its requests run again one by one, so that only the bad request fails.
    ``close`` ends the worker (a version no longer served).
    """

    def __init__(self, run: ModelCall, max_size: int, timeout_s: float = 0.0):
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        self.run = run
        self.max_size = max_size
        self.timeout_s = timeout_s
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        self._next: _Pending | object | None = None

    @property
    def queued(self) -> int:
        """Requests waiting for a model call."""
        waiting = 0 if self._queue is None else self._queue.qsize()
        return waiting + (self._next is not None)

    async def predict(self, images: list[bytes]) -> dict[str, np.ndarray]:
        """The model's outputs for ``images``, rows in the same order."""
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._work())
        pending = _Pending(images, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(pending)
        return await pending.future

    def close(self) -> None:
        """Ends the worker once the requests queued so far have their answers (it goes on
        while requests keep coming)."""
        if self._worker is not None and not self._worker.done():
            self._queue.put_nowait(_CLOSE)

    async def _collect(self) -> list[_Pending]:
        """The next batch; empty once ``close`` was called."""
        first = self._next or await self._queue.get()
        self._next = None
        while first is _CLOSE:
            if self._queue.empty():
                return []
            first = self._queue.get_nowait()  # queued after the close: keep working
        batch, size = [first], len(first.images)
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while size < self.max_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item is _CLOSE or size + len(item.images) > self.max_size:
                self._next = item
                break
            batch.append(item)
            size += len(item.images)
        return batch

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while batch := await self._collect():
            images = [image for item in batch for image in item.images]
            try:
                outputs = await loop.run_in_executor(None, self.run, images)
            except InvalidInput as e:
                if len(batch) == 1:
                    _settle(batch[0].future, error=e)
                else:
                    for item in batch:
                        try:
                            result = await loop.run_in_executor(None, self.run, item.images)
                        except Exception as item_error:
                            _settle(item.future, error=item_error)
                        else:
                            _settle(item.future, result)
                continue
            except Exception as e:
                for item in batch:
                    _settle(item.future, error=e)
                continue
            start = 0
            for item in batch:
                end = start + len(item.images)
                _settle(item.future, {name: value[start:end] for name, value in outputs.items()})
                start = end


def _settle(future: asyncio.Future, result: Any = None, error: BaseException | None = None):
    if future.done():  # its request was cancelled (shutdown past the grace period)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
